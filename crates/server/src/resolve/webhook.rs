//! The webhook handler: POST the resolve context to the user's function
//! service and read the same answer a script would return.

use super::{HandlerAnswer, parse_answer};
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Largest answer read from a webhook; the answer holds one document.
const WEBHOOK_ANSWER_BYTES_MAX: usize = 2 * 1024 * 1024;

pub(super) async fn call(
    http: &reqwest::Client,
    url: &str,
    timeout_ms: u64,
    headers: &[(String, String)],
    call_ctx: &Value,
) -> Result<HandlerAnswer, WebhookError> {
    let exchange = async {
        let mut request = http.post(url).json(call_ctx);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| format!("webhook request failed: {}", without_url(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("webhook answered HTTP {}", status.as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("webhook answer broke off: {}", without_url(&e)))?
        {
            if body.len() + chunk.len() > WEBHOOK_ANSWER_BYTES_MAX {
                return Err(format!(
                    "webhook answer is larger than {WEBHOOK_ANSWER_BYTES_MAX} bytes"
                ));
            }
            body.extend_from_slice(&chunk);
        }
        let value: Value = serde_json::from_slice(&body)
            .map_err(|e| format!("webhook returned malformed output: {e}"))?;
        parse_answer(&value).map_err(|e| format!("webhook returned malformed output: {e}"))
    };
    match tokio::time::timeout(Duration::from_millis(timeout_ms), exchange).await {
        Ok(answer) => answer.map_err(WebhookError::Failed),
        Err(_) => Err(WebhookError::TimedOut(format!(
            "webhook exceeded its time limit of {timeout_ms} ms"
        ))),
    }
}

/// Why a webhook gave no answer; the message becomes the rejection's reason.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum WebhookError {
    TimedOut(String),
    Failed(String),
}

impl WebhookError {
    pub(super) fn message(self) -> String {
        match self {
            WebhookError::TimedOut(m) | WebhookError::Failed(m) => m,
        }
    }
}

/// reqwest errors repeat the URL, which may carry credentials in its query.
fn without_url(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    if let Some(url) = error.url() {
        text = text.replace(url.as_str(), "<url>");
    }
    text
}

/// Where webhooks may go. A function service on a loopback, link-local,
/// private or unspecified address (cloud metadata at 169.254.169.254, the
/// host's own ports, the office network) is refused unless `allow` names
/// it: an address or a range (`127.0.0.1`, `10.0.0.0/8`, `::1`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WebhookPolicy {
    allow: Vec<(IpAddr, u8)>,
}

impl WebhookPolicy {
    /// Parses `webhook_allow`'s entries, saying which one is not a range.
    pub fn new(allow: &[String]) -> Result<WebhookPolicy, String> {
        let mut ranges = Vec::with_capacity(allow.len());
        for entry in allow {
            let (addr, bits) = match entry.split_once('/') {
                Some((addr, bits)) => (addr, Some(bits)),
                None => (entry.as_str(), None),
            };
            let addr: IpAddr = addr.parse().map_err(|_| {
                format!("webhook_allow entry {entry:?} is not an address or a range")
            })?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                None => max,
                Some(bits) => bits
                    .parse::<u8>()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or_else(|| {
                        format!("webhook_allow entry {entry:?} has a bad prefix length")
                    })?,
            };
            ranges.push((addr, bits));
        }
        Ok(WebhookPolicy { allow: ranges })
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.allow
            .iter()
            .any(|(net, bits)| in_range(ip, canonical(*net), *bits))
    }

    /// Why the address may not be called, if it may not.
    fn refusal(&self, ip: IpAddr) -> Option<String> {
        let kind = forbidden_kind(canonical(ip))?;
        (!self.allowed(ip))
            .then(|| format!("{ip} is a {kind} address; list it in webhook_allow to call it"))
    }

    /// The rules a URL must follow when a collection is configured, and
    /// again before every call: http or https, a host, no credentials, and
    /// no forbidden address (a name is checked once resolved, at call time).
    pub fn check_url(&self, text: &str) -> Result<reqwest::Url, String> {
        let after_scheme = text.split_once("://").map_or("", |(_, rest)| rest);
        if after_scheme.starts_with('/') || after_scheme.is_empty() {
            return Err("handler.webhook.url has no host".into());
        }
        let url = reqwest::Url::parse(text)
            .map_err(|e| format!("handler.webhook.url is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("handler.webhook.url must be http:// or https://".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(
                "handler.webhook.url may not carry credentials (user:password@); the function service must authenticate Sluice otherwise".into(),
            );
        }
        let Some(host) = url.host_str() else {
            return Err("handler.webhook.url has no host".into());
        };
        // The URL parser writes every form of an address (`2130706433`,
        // `0x7f.1`) as its usual one, brackets around IPv6.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let refusal = match bare.parse::<IpAddr>() {
            Ok(ip) => self.refusal(ip),
            Err(_) => {
                let name = bare.trim_end_matches('.').to_ascii_lowercase();
                (name == "localhost" || name.ends_with(".localhost"))
                    .then(|| self.refusal(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)))
                    .flatten()
            }
        };
        match refusal {
            Some(why) => Err(format!("handler.webhook.url: {why}")),
            None => Ok(url),
        }
    }
}

/// IPv4 addresses written as IPv6 (`::ffff:127.0.0.1`) are the IPv4 ones.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn in_range(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// What kind of address a webhook must not reach without leave.
fn forbidden_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_unspecified() || a == 0 {
                Some("unspecified")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if v4.is_private() || (a == 100 && (64..128).contains(&b)) {
                Some("private")
            } else if v4.is_broadcast() || v4.is_multicast() {
                Some("broadcast or multicast")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if first & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if first & 0xfe00 == 0xfc00 {
                Some("private")
            } else if v6.is_multicast() {
                Some("broadcast or multicast")
            } else {
                None
            }
        }
    }
}

/// Resolves a webhook's host name and keeps only the addresses the policy
/// lets it call, so a name that points at a forbidden address (or is made
/// to, between the check and the call) is not called.
struct GuardedResolver(WebhookPolicy);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let mut refused = None;
            let allowed: Vec<SocketAddr> = found
                .filter(|addr| match policy.refusal(addr.ip()) {
                    Some(why) => {
                        refused = Some(why);
                        false
                    }
                    None => true,
                })
                .collect();
            if allowed.is_empty() {
                let why = refused.unwrap_or_else(|| format!("{host} has no address"));
                return Err(why.into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The client webhooks are called with: redirects are never followed (a
/// 307 would re-POST the context elsewhere), names resolve through the
/// policy.
pub(super) fn client(policy: &WebhookPolicy) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(std::sync::Arc::new(GuardedResolver(policy.clone())))
        .build()
        .unwrap_or_else(|_| reqwest::Client::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The core checks a webhook's headers with no HTTP crate; it must
    /// agree with the client that sends them, or a configuration it
    /// accepts would fail at every call.
    #[test]
    fn the_cores_header_checks_agree_with_the_clients() {
        use reqwest::header::{HeaderName, HeaderValue};
        use sluice_core::resolve::{is_header_name, is_header_value};
        let mut samples: Vec<String> = (0u32..=0x2FF)
            .filter_map(char::from_u32)
            .map(|c| format!("x{c}y"))
            .collect();
        samples.extend(["", " ", "\t", "a b", "X-Token", "é", "a\r\nb"].map(String::from));
        for s in &samples {
            assert_eq!(
                is_header_name(s),
                HeaderName::from_bytes(s.as_bytes()).is_ok(),
                "header name {s:?}"
            );
            assert_eq!(
                is_header_value(s),
                HeaderValue::from_str(s).is_ok(),
                "header value {s:?}"
            );
        }
    }

    #[test]
    fn urls_that_reach_inside_are_refused_unless_allowed() {
        let closed = WebhookPolicy::default();
        for url in [
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]:8080/x",
            "http://2130706433/x",
            "http://0.0.0.0/x",
            "http:///x",
            "http://user:pass@example.com/x",
            "http://10.1.2.3/x",
            "http://192.168.0.1/x",
            "http://[::ffff:127.0.0.1]/x",
            "http://localhost:9/x",
            "ftp://example.com/x",
            "http://",
        ] {
            assert!(closed.check_url(url).is_err(), "{url} should be refused");
        }
        assert!(
            closed
                .check_url("https://hooks.example.com/resolve")
                .is_ok()
        );
        assert!(closed.check_url("http://93.184.216.34:8080/r").is_ok());
        let open = WebhookPolicy::new(&["127.0.0.1".into(), "10.0.0.0/8".into()]).expect("policy");
        assert!(open.check_url("http://127.0.0.1:8090/resolve").is_ok());
        assert!(open.check_url("http://localhost:8090/resolve").is_ok());
        assert!(open.check_url("http://10.9.9.9/r").is_ok());
        assert!(open.check_url("http://127.0.0.2/r").is_err());
        assert!(open.check_url("http://169.254.169.254/").is_err());
        assert!(WebhookPolicy::new(&["10.0.0.0/33".into()]).is_err());
        assert!(WebhookPolicy::new(&["example.com".into()]).is_err());
    }
}
