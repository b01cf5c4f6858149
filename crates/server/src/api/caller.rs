//! Who is calling, decided in one place. Today a request names its client
//! itself: in the `client` query parameter of the routes that serve one
//! client's answers, in a mutation's body otherwise. Authentication decides
//! it from the credential instead, here, and every handler already takes
//! the [`Caller`] rather than reading `client` itself.

use super::ApiError;
use super::query::QueryParams;
use crate::auth::limits::{ClientLimiter, InFlight, Limited};
use crate::auth::{
    Action, AuthMode, Authenticator, CollectionAction, Identity, Principal, Refused,
};
use crate::resolve::access::Access;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

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
#[derive(Clone)]
pub(super) struct Caller {
    /// The client the request names, if it names one.
    named: Option<String>,
    identity: Identity,
    limits: Option<Arc<ClientLimiter>>,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        // Fail closed: a route reached without `authenticate` has no caller.
        let identity = parts.extensions.get::<Identity>().cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the request reached a handler without being authenticated",
            )
        })?;
        let query = parts.uri.query().unwrap_or("");
        let named = form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == "client")
            .map(|(_, value)| value.into_owned());
        let limits = parts.extensions.get::<Arc<ClientLimiter>>().cloned();
        Ok(Caller {
            named,
            identity,
            limits,
        })
    }
}

impl Caller {
    /// The client whose answers, pending mutations or events the route
    /// serves. Without authentication it must be named; with it, it is the
    /// caller unless named otherwise, and only a role that may read
    /// others' may name someone else.
    pub(super) fn client(&self) -> Result<&str, ApiError> {
        match (&self.identity, self.named.as_deref()) {
            (Identity::Open, Some(named)) => Ok(named),
            (Identity::Open, None) => Err(ApiError::bad_request(format!(
                "query parameter \"client\" is required: {}",
                CLIENT_PARAM.1
            ))),
            (Identity::Verified(p), named) => {
                self.require(Action::ReadOwn)?;
                match named {
                    None => Ok(&p.subject),
                    Some(named) if named == p.subject => Ok(named),
                    Some(named) if p.role.may(Action::ReadOthers) => Ok(named),
                    Some(named) => Err(mismatch(format!(
                        "the query names client {named:?}, but the caller is {:?}; a client reads only its own",
                        p.subject
                    ))),
                }
            }
        }
    }

    /// The client a mutation whose body names `body_client` (absent: the
    /// anonymous client) is sent as. Without authentication the body says
    /// (a `client` in the query must agree with it); with it, the caller is
    /// the client, and a body or query naming anyone else is refused.
    pub(super) fn sender(&self, body_client: Option<String>) -> Result<Option<String>, ApiError> {
        let caller = match &self.identity {
            Identity::Verified(p) => p.subject.as_str(),
            Identity::Open => match &self.named {
                Some(named) => named.as_str(),
                None => return Ok(body_client),
            },
        };
        let said = [body_client.as_deref(), self.named.as_deref()];
        if let Some(other) = said.into_iter().flatten().find(|c| *c != caller) {
            return Err(mismatch(format!(
                "the request says client {other:?}, but the caller is {caller:?}"
            )));
        }
        if matches!(self.identity, Identity::Open) && body_client.is_none() && !caller.is_empty() {
            return Err(mismatch(format!(
                "the body says client \"\", but the caller is {caller:?}"
            )));
        }
        Ok(match &self.identity {
            Identity::Verified(p) => Some(p.subject.clone()),
            Identity::Open => body_client,
        })
    }

    /// The client a read with `intent=write` will write as: without
    /// authentication the one the query names, else the anonymous client
    /// (a mutation without `client`); with it, the caller.
    pub(super) fn writer(&self) -> Result<String, ApiError> {
        match &self.identity {
            Identity::Open => Ok(self.named.clone().unwrap_or_default()),
            Identity::Verified(_) => self.sender(None).map(Option::unwrap_or_default),
        }
    }

    /// Counts `n` more of the caller's mutations in flight until the guard
    /// is dropped, or refuses them over its role's bound (429). Without
    /// authentication there is no client to count.
    pub(super) fn hold(&self, n: usize) -> Result<Option<InFlight>, ApiError> {
        match (&self.identity, &self.limits) {
            (Identity::Verified(p), Some(limits)) => limits.mutations(p, n).map_err(too_many),
            _ => Ok(None),
        }
    }

    /// The verified caller; `None` when authentication is off.
    pub(super) fn principal(&self) -> Option<&Principal> {
        match &self.identity {
            Identity::Open => None,
            Identity::Verified(p) => Some(p),
        }
    }

    /// Refuses a mutation to be queued without waiting (`?wait=false`),
    /// whose guard cannot outlive the request, when the caller already has
    /// its role's bound of mutations being decided or queued (`held`, as
    /// the engine counts them).
    pub(super) fn may_queue(&self, held: impl FnOnce(&str) -> usize) -> Result<(), ApiError> {
        match (&self.identity, &self.limits) {
            (Identity::Verified(p), Some(limits)) => {
                limits.queued(p, held(&p.subject)).map_err(too_many)
            }
            _ => Ok(()),
        }
    }

    /// Refuses the request unless the caller may take `action` in
    /// `collection`, whose rules are `access`.
    pub(super) fn require_in(
        &self,
        collection: &str,
        access: &Access,
        action: CollectionAction,
    ) -> Result<(), ApiError> {
        match &self.identity {
            Identity::Open => Ok(()),
            Identity::Verified(p) if p.may_in(access, action) => Ok(()),
            Identity::Verified(p) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "client {:?} (role {}) may not {} in collection {collection:?}",
                    p.subject,
                    p.role,
                    collection_words(action)
                ),
            )),
        }
    }

    /// Refuses the request unless the caller may take `action`.
    pub(super) fn require(&self, action: Action) -> Result<(), ApiError> {
        match &self.identity {
            Identity::Open => Ok(()),
            Identity::Verified(p) if p.role.may(action) => Ok(()),
            Identity::Verified(p) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!("role {} may not {}", p.role, action_words(action)),
            )),
        }
    }
}

fn too_many(limited: Limited) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        limited.code(),
        limited.message(),
    )
    .retry_after(limited.retry_after_s())
}

fn mismatch(message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "client_mismatch", message)
}

fn collection_words(action: CollectionAction) -> &'static str {
    match action {
        CollectionAction::Read => "read documents",
        CollectionAction::Write => "send mutations",
        CollectionAction::Configure => "read or change the configuration",
        CollectionAction::History => "read conflicts",
        CollectionAction::Quarantine => "act on quarantined mutations",
    }
}

fn action_words(action: Action) -> &'static str {
    match action {
        Action::ReadDocuments => "read documents",
        Action::Write => "send mutations",
        Action::ReadOwn => "read answers, pending mutations or events",
        Action::ReadOthers => "read another client's answers, pending mutations or events",
        Action::Operate => {
            "configure collections or read conflicts, the quarantine, the model, statistics or metrics"
        }
    }
}

/// Paths served to anyone: whether the process is up, what the API is, and
/// the dashboard's page (code only: its data comes from routes that ask for
/// a credential, and the page asks the person for one).
pub(super) const PUBLIC_PATHS: [&str; 3] = ["/healthz", "/openapi.json", "/"];

/// Decides who sent each request and hands it on as its [`Identity`]; a
/// missing or bad credential is answered 401 here, before any handler runs.
pub(super) async fn authenticate(
    State(auth): State<Arc<Authenticator>>,
    mut request: Request,
    next: Next,
) -> Response {
    if auth.mode() == AuthMode::None || auth.exempt(request.uri().path()) {
        request.extensions_mut().insert(Identity::Open);
        return next.run(request).await;
    }
    if PUBLIC_PATHS.contains(&request.uri().path()) {
        // Served without a caller: a handler that asked for one would refuse.
        return next.run(request).await;
    }
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    match auth.identify(header).await {
        Ok(identity) => {
            if let Identity::Verified(principal) = &identity
                && let Err(limited) = auth.limits().request(principal)
            {
                return too_many(limited).into_response();
            }
            request.extensions_mut().insert(identity);
            request.extensions_mut().insert(auth.limits().clone());
            next.run(request).await
        }
        Err(refused @ Refused::Busy) => ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            refused.code(),
            refused.message(),
        )
        .retry_after(1)
        .into_response(),
        Err(Refused::Unavailable(e)) => {
            ApiError::unavailable(format!("the credential could not be checked: {e}"))
                .into_response()
        }
        Err(refused) => ApiError::new(StatusCode::UNAUTHORIZED, refused.code(), refused.message())
            .into_response(),
    }
}

/// The `WWW-Authenticate` challenge of a 401 with `code` (RFC 6750): a
/// request that sent no credential is told the scheme only.
pub(super) fn challenge(code: &str) -> HeaderValue {
    if code == Refused::Missing.code() {
        HeaderValue::from_static("Bearer realm=\"sluice\"")
    } else {
        HeaderValue::from_static("Bearer realm=\"sluice\", error=\"invalid_token\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::auth::Role;

    fn open(named: Option<&str>) -> Caller {
        Caller {
            named: named.map(str::to_owned),
            identity: Identity::Open,
            limits: None,
        }
    }

    fn verified(named: Option<&str>, subject: &str, role: Role) -> Caller {
        Caller {
            named: named.map(str::to_owned),
            identity: Identity::Verified(Principal {
                subject: subject.into(),
                role,
            }),
            limits: None,
        }
    }

    #[test]
    fn a_named_caller_is_the_client_and_sends_only_as_itself() {
        let alice = open(Some("alice"));
        assert_eq!(alice.client().ok(), Some("alice"));
        assert_eq!(
            alice.sender(Some("alice".into())).ok(),
            Some(Some("alice".into()))
        );
        let refused = alice
            .sender(Some("bob".into()))
            .expect_err("another client");
        assert_eq!(refused.status, StatusCode::FORBIDDEN);
        assert_eq!(refused.code, "client_mismatch");
        assert!(alice.sender(None).is_err(), "nor as the anonymous client");

        let unnamed = open(None);
        let missing = unnamed.client().expect_err("client is required");
        assert!(missing.message.contains("\"client\" is required"));
        assert_eq!(
            unnamed.sender(Some("bob".into())).ok(),
            Some(Some("bob".into()))
        );
        assert_eq!(unnamed.sender(None).ok(), Some(None), "the body decides");
    }

    #[test]
    fn a_verified_caller_is_its_subject_whatever_the_request_says() {
        let alice = verified(None, "alice", Role::Writer);
        assert_eq!(alice.client().ok(), Some("alice"));
        assert_eq!(alice.sender(None).ok(), Some(Some("alice".into())));
        assert_eq!(
            alice.sender(Some("alice".into())).ok(),
            Some(Some("alice".into()))
        );
        let forged = alice.sender(Some("bob".into())).expect_err("forged client");
        assert_eq!(
            (forged.status, forged.code),
            (StatusCode::FORBIDDEN, "client_mismatch")
        );
        let nosy = verified(Some("bob"), "alice", Role::Writer);
        assert_eq!(
            nosy.client().expect_err("bob's answers").code,
            "client_mismatch"
        );
        assert_eq!(
            nosy.sender(None).expect_err("as bob").code,
            "client_mismatch"
        );
        let admin = verified(Some("bob"), "root", Role::Admin);
        assert_eq!(admin.client().ok(), Some("bob"), "an admin reads anyone's");
        assert!(admin.sender(None).is_err(), "but sends only as itself");

        let reader = verified(None, "carol", Role::Reader);
        assert!(reader.require(Action::ReadDocuments).is_ok());
        assert_eq!(reader.client().ok(), Some("carol"), "its own answers");
        let none = Access::default();
        for refused in [
            reader
                .require_in("notes", &none, CollectionAction::Write)
                .expect_err("a reader does not write"),
            reader.require(Action::Operate).expect_err("nor operates"),
        ] {
            assert_eq!(
                (refused.status, refused.code),
                (StatusCode::FORBIDDEN, "forbidden")
            );
        }
        assert!(open(None).require(Action::Operate).is_ok());
    }
}
