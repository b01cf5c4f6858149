//! Who is calling, decided in one place. Today a request names its client
//! itself: in the `client` query parameter of the routes that serve one
//! client's answers, in a mutation's body otherwise. Authentication decides
//! it from the credential instead, here, and every handler already takes
//! the [`Caller`] rather than reading `client` itself.

use super::ApiError;
use super::query::QueryParams;
use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;

/// What a `client` parameter takes, as errors say it.
pub(super) const CLIENT_PARAM: (&str, &str) = (
    "client",
    "the client that sent the mutations, as in their bodies (client= for a body without one)",
);

/// The query of a route whose one parameter is the caller's `client`.
#[derive(serde::Deserialize)]
pub(super) struct ClientOnly {}

impl QueryParams for ClientOnly {
    const PARAMS: &'static [(&'static str, &'static str)] = &[CLIENT_PARAM];
}

/// The caller of a request.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Caller {
    /// The client the request names, if it names one.
    named: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        let named = form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == "client")
            .map(|(_, value)| value.into_owned());
        Ok(Caller { named })
    }
}

impl Caller {
    /// The client whose answers the route serves: it must be named.
    pub(super) fn client(&self) -> Result<&str, ApiError> {
        self.named.as_deref().ok_or_else(|| {
            ApiError::bad_request(format!(
                "query parameter \"client\" is required: {}",
                CLIENT_PARAM.1
            ))
        })
    }

    /// Checks that the caller may send a mutation whose body names
    /// `body_client` (absent: the anonymous client): a caller known to be
    /// someone else may not.
    pub(super) fn may_send(&self, body_client: Option<&str>) -> Result<(), ApiError> {
        match &self.named {
            Some(caller) if caller.as_str() != body_client.unwrap_or("") => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "client_mismatch",
                format!(
                    "the body says client {:?}, but the caller is {caller:?}",
                    body_client.unwrap_or("")
                ),
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_caller_is_the_client_and_sends_only_as_itself() {
        let alice = Caller {
            named: Some("alice".into()),
        };
        assert_eq!(alice.client().ok(), Some("alice"));
        assert!(alice.may_send(Some("alice")).is_ok());
        let refused = alice.may_send(Some("bob")).expect_err("another client");
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert!(alice.may_send(None).is_err(), "nor as the anonymous client");

        let unnamed = Caller { named: None };
        let missing = unnamed.client().expect_err("client is required");
        assert!(missing.message.contains("\"client\" is required"));
        assert!(unnamed.may_send(Some("bob")).is_ok(), "the body decides");
    }
}
