-- Each request patches one of 10,000 documents, unconditionally.
counter = 0
request = function()
  counter = counter + 1
  local key = math.random(0, 9999)
  local body = string.format('{"collection":"bench","key":"doc-%d","op":"patch","value":{"n":%d,"tags":["t%d"]}}', key, counter, counter % 7)
  return wrk.format("POST", "/v1/mutations", {["Content-Type"]="application/json"}, body)
end
