//! Query strings, read strictly: a parameter the route does not take is
//! refused (a misspelt filter silently widened a listing), a parameter given
//! twice is refused, and every error names the parameter, what it takes and
//! what was sent, in the API's own words rather than a deserializer's.

use super::ApiError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

/// A route's query parameters: their names and, for each, what it takes,
/// as the errors say it.
pub(super) trait QueryParams: DeserializeOwned {
    const PARAMS: &'static [(&'static str, &'static str)];
}

/// The query of a route that takes no parameters.
#[derive(serde::Deserialize)]
pub(super) struct NoParams {}

impl QueryParams for NoParams {
    const PARAMS: &'static [(&'static str, &'static str)] = &[];
}

/// A route's query, parsed by [`QueryParams`]' rules.
pub(super) struct ApiQuery<T>(pub T);

impl<T: QueryParams, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let route = format!("{} {}", parts.method, parts.uri.path());
        parse(parts.uri.query().unwrap_or(""), &route).map(ApiQuery)
    }
}

/// Parses `raw` (the query string without its `?`) for the route `route`
/// (named in errors).
pub(super) fn parse<T: QueryParams>(raw: &str, route: &str) -> Result<T, ApiError> {
    let mut seen: Vec<String> = Vec::new();
    for (name, _) in form_urlencoded::parse(raw.as_bytes()) {
        if !T::PARAMS.iter().any(|(known, _)| *known == name) {
            return Err(ApiError::bad_request(format!(
                "unknown query parameter {name:?}; {}",
                takes(T::PARAMS, route)
            )));
        }
        if seen.iter().any(|s| *s == name) {
            return Err(ApiError::bad_request(format!(
                "query parameter {name:?} is given twice; send it once"
            )));
        }
        seen.push(name.into_owned());
    }
    let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(raw.as_bytes()));
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // A missing field has no path: serde names it in its message.
        let missing = inner
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'));
        if let Some(name) = missing {
            return ApiError::bad_request(format!(
                "query parameter {name:?} is required: {}",
                what(T::PARAMS, name)
            ));
        }
        let sent = form_urlencoded::parse(raw.as_bytes())
            .find(|(n, _)| *n == path)
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default();
        ApiError::bad_request(format!(
            "query parameter {path:?} takes {}; got {sent:?}",
            what(T::PARAMS, &path)
        ))
    })
}

fn what(params: &[(&str, &'static str)], name: &str) -> &'static str {
    params
        .iter()
        .find(|(n, _)| *n == name)
        .map_or("a valid value", |(_, w)| *w)
}

fn takes(params: &[(&str, &str)], route: &str) -> String {
    if params.is_empty() {
        return format!("{route} takes no query parameters");
    }
    let list: Vec<String> = params
        .iter()
        .map(|(name, what)| format!("{name} ({what})"))
        .collect();
    format!("{route} takes: {}", list.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    struct Q {
        client: String,
        limit: Option<u32>,
    }

    impl QueryParams for Q {
        const PARAMS: &'static [(&'static str, &'static str)] = &[
            ("client", "the client's name"),
            ("limit", "a whole number from 1 to 1000"),
        ];
    }

    fn message(raw: &str) -> String {
        match parse::<Q>(raw, "GET /x") {
            Ok(q) => panic!("accepted {raw:?} as {q:?}"),
            Err(e) => e.message,
        }
    }

    #[test]
    fn a_good_query_parses() {
        let q = parse::<Q>("client=alice%20b&limit=5", "GET /x").expect("parses");
        assert_eq!(q.client, "alice b");
        assert_eq!(q.limit, Some(5));
        let q = parse::<Q>("client=", "GET /x").expect("an empty client is the anonymous one");
        assert_eq!(q.client, "");
    }

    #[test]
    fn errors_name_the_parameter_and_what_it_takes() {
        assert_eq!(
            message("client=a&limt=1"),
            "unknown query parameter \"limt\"; GET /x takes: client (the client's name), limit (a whole number from 1 to 1000)"
        );
        assert_eq!(
            message("limit=1"),
            "query parameter \"client\" is required: the client's name"
        );
        assert_eq!(
            message("client=a&limit=abc"),
            "query parameter \"limit\" takes a whole number from 1 to 1000; got \"abc\""
        );
        assert_eq!(
            message("client=a&client=b"),
            "query parameter \"client\" is given twice; send it once"
        );
        match parse::<NoParams>("x=1", "GET /y") {
            Ok(_) => panic!("accepted a parameter of a route that takes none"),
            Err(e) => assert_eq!(
                e.message,
                "unknown query parameter \"x\"; GET /y takes no query parameters"
            ),
        }
    }
}
