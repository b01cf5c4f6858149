//! Who is calling. The configured mode (`none`, `keys`) decides how a
//! request's `Authorization: Bearer` credential becomes a [`Principal`]: a
//! subject, which is the client its mutations are recorded under, and a
//! role. The HTTP layer asks [`Authenticator::identify`] once per request and
//! hands the answer to every handler as its caller; what each role may do is
//! [`Role::may`].

pub mod jwt;
pub mod keys;
pub mod limits;

use crate::clock::SharedClock;
use crate::resolve::access::{Access, Grantee, grantee};
use crate::store::SharedStore;
use std::fmt;
use std::sync::Arc;

/// How clients authenticate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// Nobody: every request may do everything, as the client it names.
    None,
    /// API keys made by `sluice keys create`, stored hashed in the store.
    Keys,
    /// JWT bearer tokens, checked as `[jwt]` configures.
    Jwt,
}

impl AuthMode {
    pub fn parse(text: &str) -> Option<AuthMode> {
        match text {
            "none" => Some(AuthMode::None),
            "keys" => Some(AuthMode::Keys),
            "jwt" => Some(AuthMode::Jwt),
            _ => None,
        }
    }
}

/// A built-in role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything: configuration, keys, the model, statistics, every
    /// client's answers.
    Admin,
    /// Reads and writes documents; reads its own answers and events.
    Writer,
    /// Reads documents (and its own answers, should a collection's rules
    /// let it write).
    Reader,
}

/// What a request wants to do, as the roles are written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Read a document.
    ReadDocuments,
    /// Send mutations.
    Write,
    /// Read one's own stored answers, pending mutations and event stream.
    ReadOwn,
    /// Read another client's answers, pending mutations or events.
    ReadOthers,
    /// Configure a collection, read its conflicts and history, act on its
    /// quarantine, read the model, statistics, metrics and the dashboard.
    Operate,
}

/// What a request wants to do in one collection, as its rules are written
/// in (`access` in the collection's configuration).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CollectionAction {
    Read,
    Write,
    Configure,
    History,
    Quarantine,
}

impl CollectionAction {
    /// The name of its rule.
    pub fn name(self) -> &'static str {
        match self {
            CollectionAction::Read => "read",
            CollectionAction::Write => "write",
            CollectionAction::Configure => "configure",
            CollectionAction::History => "history",
            CollectionAction::Quarantine => "quarantine",
        }
    }

    /// What the roles decide when the collection has no rule for it.
    fn by_role(self) -> Action {
        match self {
            CollectionAction::Read => Action::ReadDocuments,
            CollectionAction::Write => Action::Write,
            CollectionAction::Configure
            | CollectionAction::History
            | CollectionAction::Quarantine => Action::Operate,
        }
    }

    fn rule(self, access: &Access) -> Option<&[String]> {
        match self {
            CollectionAction::Read => access.read.as_deref(),
            CollectionAction::Write => access.write.as_deref(),
            CollectionAction::Configure => access.configure.as_deref(),
            CollectionAction::History => access.history.as_deref(),
            CollectionAction::Quarantine => access.quarantine.as_deref(),
        }
    }
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Admin, Role::Writer, Role::Reader];

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Writer => "writer",
            Role::Reader => "reader",
        }
    }

    /// Whether the role allows the action.
    pub fn may(self, action: Action) -> bool {
        match self {
            Role::Admin => true,
            Role::Writer => matches!(
                action,
                Action::ReadDocuments | Action::Write | Action::ReadOwn
            ),
            Role::Reader => matches!(action, Action::ReadDocuments | Action::ReadOwn),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A verified caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The client the caller is: its mutations are recorded under it.
    pub subject: String,
    pub role: Role,
}

impl Principal {
    /// Whether the caller may take `action` in a collection whose rules are
    /// `access`: an admin always may; a rule, where there is one, decides;
    /// the role decides otherwise.
    pub fn may_in(&self, access: &Access, action: CollectionAction) -> bool {
        if self.role == Role::Admin {
            return true;
        }
        let Some(entries) = action.rule(access) else {
            return self.role.may(action.by_role());
        };
        entries.iter().any(|entry| match grantee(entry) {
            Ok(Grantee::Anyone) => true,
            Ok(Grantee::Role(role)) => role == self.role.as_str(),
            Ok(Grantee::Client(client)) => client == self.subject,
            // Validated when stored; an entry that is not one grants nothing.
            Err(_) => false,
        })
    }
}

/// Who a request comes from, as the authenticator found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// Authentication is off: the request names its client itself.
    Open,
    Verified(Principal),
}

/// Why a credential was refused. Each says only which kind of failure it
/// was, never what a valid credential would hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// No `Authorization` header.
    Missing,
    /// Not `Bearer <credential>`, or not the form of a credential.
    Malformed,
    /// No such key, or its secret does not match.
    Unknown,
    /// A key that was revoked.
    Revoked,
    /// A token past its `exp`.
    Expired,
    /// A token before its `nbf`.
    NotYetValid,
    /// A token from another issuer.
    WrongIssuer,
    /// A token for another audience.
    WrongAudience,
    /// The credential could not be checked (the store is down): 503.
    Unavailable(String),
    /// Too many credentials this process has not seen lately are being
    /// checked at once (a flood of made-up keys): 429, try again in a
    /// second. Keys it has seen lately are still served.
    Busy,
}

impl Refused {
    /// The error code the answer carries.
    pub fn code(&self) -> &'static str {
        match self {
            Refused::Missing => "credential_missing",
            Refused::Malformed => "credential_malformed",
            Refused::Unknown => "credential_invalid",
            Refused::Revoked => "credential_revoked",
            Refused::Expired => "token_expired",
            Refused::NotYetValid => "token_not_yet_valid",
            Refused::WrongIssuer => "token_wrong_issuer",
            Refused::WrongAudience => "token_wrong_audience",
            Refused::Unavailable(_) => "store_unavailable",
            Refused::Busy => "credential_checks_limited",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Refused::Missing => {
                "this server needs a credential: send Authorization: Bearer <key or token>".into()
            }
            Refused::Malformed => {
                "the Authorization header is not Bearer followed by a credential of this server's form".into()
            }
            Refused::Unknown => "the credential is not valid here".into(),
            Refused::Revoked => "the credential was revoked".into(),
            Refused::Expired => "the token has expired".into(),
            Refused::NotYetValid => "the token is not valid yet".into(),
            Refused::WrongIssuer => "the token was issued by another issuer".into(),
            Refused::WrongAudience => "the token is meant for another audience".into(),
            Refused::Unavailable(e) => format!("the credential could not be checked: {e}"),
            Refused::Busy => {
                "too many unfamiliar credentials are being checked; retry in a second".into()
            }
        }
    }
}

/// Checks credentials; one per server, shared by every request.
pub struct Authenticator {
    mode: AuthMode,
    keys: Option<keys::KeyCache>,
    jwt: Option<jwt::JwtVerifier>,
    limits: Arc<limits::ClientLimiter>,
    /// Paths served without a credential, as configured.
    exempt: Vec<&'static str>,
}

impl Authenticator {
    /// Authentication off.
    pub fn open() -> Authenticator {
        Authenticator {
            mode: AuthMode::None,
            keys: None,
            jwt: None,
            limits: Arc::new(limits::ClientLimiter::new(limits::LimitsConfig::default())),
            exempt: Vec::new(),
        }
    }

    /// API keys from `store`.
    pub fn with_keys(store: SharedStore, clock: SharedClock) -> Authenticator {
        Authenticator {
            mode: AuthMode::Keys,
            keys: Some(keys::KeyCache::new(store, clock)),
            jwt: None,
            limits: Arc::new(limits::ClientLimiter::new(limits::LimitsConfig::default())),
            exempt: Vec::new(),
        }
    }

    /// JWT bearer tokens, as `config` says; `Err` says what is wrong with it.
    pub fn with_jwt(config: jwt::JwtConfig, clock: SharedClock) -> Result<Authenticator, String> {
        Ok(Authenticator {
            mode: AuthMode::Jwt,
            keys: None,
            jwt: Some(jwt::JwtVerifier::new(config, clock)?),
            limits: Arc::new(limits::ClientLimiter::new(limits::LimitsConfig::default())),
            exempt: Vec::new(),
        })
    }

    /// Limits each authenticated client as `config` says per role.
    pub fn with_limits(self, config: limits::LimitsConfig) -> Authenticator {
        Authenticator {
            limits: Arc::new(limits::ClientLimiter::new(config)),
            ..self
        }
    }

    /// Serves what `names` lists (`metrics`, `dashboard`; see
    /// `Config::auth_exempt`) without a credential.
    pub fn with_exempt(self, names: &[String]) -> Authenticator {
        let mut exempt = Vec::new();
        for name in names {
            match name.as_str() {
                "metrics" => exempt.push("/metrics"),
                "dashboard" => exempt.extend(["/v1/dashboard", "/v1/dashboard/events"]),
                _ => {}
            }
        }
        Authenticator { exempt, ..self }
    }

    /// Whether `path` is served without a credential by configuration.
    pub fn exempt(&self, path: &str) -> bool {
        self.exempt.contains(&path)
    }

    /// The per-client limits, shared with the requests that hold them.
    pub fn limits(&self) -> &Arc<limits::ClientLimiter> {
        &self.limits
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Who sent a request whose `Authorization` header is `header`.
    pub async fn identify(&self, header: Option<&[u8]>) -> Result<Identity, Refused> {
        if self.mode == AuthMode::None {
            return Ok(Identity::Open);
        }
        let header = header.ok_or(Refused::Missing)?;
        let credential = bearer(header).ok_or(Refused::Malformed)?;
        let principal = match (&self.keys, &self.jwt) {
            (Some(keys), _) => keys.verify(credential).await.map_err(|e| match e {
                keys::KeyError::Refused(refused) => refused,
                keys::KeyError::Store(e) => Refused::Unavailable(e.to_string()),
            })?,
            (None, Some(jwt)) => jwt.verify(credential)?,
            // A mode without its verifier cannot be built; refuse all the same.
            (None, None) => return Err(Refused::Unknown),
        };
        Ok(Identity::Verified(principal))
    }
}

/// The credential of `Bearer <credential>` (the scheme's case ignored, as
/// RFC 7235 says).
fn bearer(header: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(header).ok()?;
    let (scheme, credential) = text.split_once(' ')?;
    let credential = credential.trim_matches(' ');
    (scheme.eq_ignore_ascii_case("bearer") && !credential.is_empty() && !credential.contains(' '))
        .then_some(credential)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_allow_what_the_readme_says() {
        use Action::*;
        let all = [ReadDocuments, Write, ReadOwn, ReadOthers, Operate];
        assert!(all.iter().all(|a| Role::Admin.may(*a)));
        let writer: Vec<_> = all.iter().filter(|a| Role::Writer.may(**a)).collect();
        assert_eq!(writer, [&ReadDocuments, &Write, &ReadOwn]);
        let reader: Vec<_> = all.iter().filter(|a| Role::Reader.may(**a)).collect();
        assert_eq!(reader, [&ReadDocuments, &ReadOwn]);
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
        assert_eq!(Role::parse("Admin"), None, "roles are lower-case");
    }

    #[test]
    fn collection_rules_narrow_and_widen_the_roles() {
        use CollectionAction::*;
        let who = |subject: &str, role| Principal {
            subject: subject.into(),
            role,
        };
        let (alice, bob) = (who("alice", Role::Writer), who("bob", Role::Writer));
        let (carol, root) = (who("carol", Role::Reader), who("root", Role::Admin));
        let open = Access::default();
        assert!(alice.may_in(&open, Write) && !alice.may_in(&open, Configure));
        assert!(!carol.may_in(&open, Write) && carol.may_in(&open, Read));

        let private = Access {
            read: Some(vec!["client:alice".into()]),
            write: Some(vec!["client:alice".into()]),
            configure: Some(vec!["client:alice".into()]),
            ..Access::default()
        };
        assert!(alice.may_in(&private, Write) && alice.may_in(&private, Configure));
        assert!(!bob.may_in(&private, Read) && !bob.may_in(&private, Write));
        assert!(
            !alice.may_in(&private, History),
            "no rule: the role decides"
        );
        assert!(root.may_in(&private, Write), "an admin may do everything");

        let shared = Access {
            write: Some(vec!["role:reader".into()]),
            history: Some(vec!["*".into()]),
            quarantine: Some(Vec::new()),
            ..Access::default()
        };
        assert!(carol.may_in(&shared, Write), "widened for readers");
        assert!(!alice.may_in(&shared, Write), "and narrowed for writers");
        assert!(bob.may_in(&shared, History) && carol.may_in(&shared, History));
        assert!(!bob.may_in(&shared, Quarantine) && root.may_in(&shared, Quarantine));
    }

    #[test]
    fn only_a_bearer_credential_is_read() {
        assert_eq!(bearer(b"Bearer abc"), Some("abc"));
        assert_eq!(bearer(b"bearer  abc "), Some("abc"));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer"), None);
        assert_eq!(bearer(b"Bearer "), None);
        assert_eq!(bearer(b"Bearer a b"), None);
        assert_eq!(bearer(b"Bearer \xff"), None);
    }
}
