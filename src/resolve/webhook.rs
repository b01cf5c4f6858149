//! The webhook handler: POST the resolve context to the user's function
//! service and read the same answer a script would return.

use super::{HandlerAnswer, parse_answer};
use serde_json::Value;
use std::time::Duration;

/// Largest answer read from a webhook; the answer holds one document.
const WEBHOOK_ANSWER_BYTES_MAX: usize = 2 * 1024 * 1024;

pub async fn call(
    http: &reqwest::Client,
    url: &str,
    timeout_ms: u64,
    call_ctx: &Value,
) -> Result<HandlerAnswer, WebhookError> {
    let exchange = async {
        let mut response = http
            .post(url)
            .json(call_ctx)
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
pub enum WebhookError {
    TimedOut(String),
    Failed(String),
}

impl WebhookError {
    pub fn message(self) -> String {
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
