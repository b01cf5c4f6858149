-- Every request appends to one of 5 hot documents with a stale base (automerge).
counter = 0
request = function()
  counter = counter + 1
  local key = math.random(0, 4)
  local body = string.format('{"collection":"hot","key":"doc-%d","op":"patch","value":{"items":["%d"]},"base_version":1}', key, counter)
  return wrk.format("POST", "/v1/mutations", {["Content-Type"]="application/json"}, body)
end
