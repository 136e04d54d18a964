//! `http.request`: one HTTP call, its response captured (status, headers, body up to a cap), failures classified
//! as retryable (network, timeout, 429, 5xx) or permanent (other 4xx, a bad rendered `with`, a policy denial).
//!
//! Decisions:
//! - Redirects are never followed (a cap of zero hops): a 3xx is a successful step whose result carries the
//!   `location` header. Following them would re-send a POST as a GET, forward the idempotency key to another host,
//!   and need the address policy re-checked at each hop.
//! - Every address the client connects to passes [`HttpPolicy`]: URLs naming an IP are checked before the request,
//!   host names by the client's resolver, which drops denied addresses from each answer at each connection (no
//!   DNS-rebinding window between a check and a connect). System proxies are ignored, so a proxy cannot carry a
//!   request past the policy.
//! - `Idempotency-Key: <run id>` is sent on every request unless the step sets that header itself.
//! - Building the client can fail only on a broken TLS setup; the worker then refuses to start rather than fall
//!   back to a client with other rules.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use orrery::http_policy::{HttpPolicy, PolicyDenied};
use orrery::pipeline::{Step, DEFAULT_HTTP_TIMEOUT_SECONDS, HTTP_METHODS, MAX_TIMEOUT_SECONDS};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Map, Value};

use super::{describe, seconds, BoxFuture, RunContext, RunFailure, Tool};

/// Default cap on a captured HTTP response body.
pub const DEFAULT_BODY_CAP_BYTES: usize = 64 * 1024;

/// Characters of a failed response's body quoted in the error message.
const ERROR_BODY_SNIPPET_CHARS: usize = 200;

/// The `http.request` tool: a client bound to the address policy, and the body cap.
#[derive(Clone)]
pub struct HttpTool {
    client: reqwest::Client,
    policy: Arc<HttpPolicy>,
    body_cap_bytes: usize,
}

impl HttpTool {
    /// The worker's client: no redirects, no proxies, an identifying user agent, every resolved address checked.
    pub fn new(policy: HttpPolicy) -> reqwest::Result<Self> {
        let policy = Arc::new(policy);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(PolicyResolver {
                policy: policy.clone(),
            }))
            .user_agent(concat!("orrery-worker/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self {
            client,
            policy,
            body_cap_bytes: DEFAULT_BODY_CAP_BYTES,
        })
    }

    /// Caps captured response bodies at `bytes` (longer bodies are truncated and returned as text).
    pub fn with_body_cap(mut self, bytes: usize) -> Self {
        self.body_cap_bytes = bytes.max(1);
        self
    }

    async fn call(&self, step: &Step, with: &Value, ctx: &RunContext) -> Result<Value, RunFailure> {
        let mut request = HttpRequest::from_with(step, with)?;
        // A URL naming an address is checked here; a name is checked on every address it resolves to, by the
        // client's resolver, at each connection.
        if let Some(ip) = literal_ip(&request.url) {
            if let Err(denied) = self.policy.check(ip) {
                return Err(policy_failure(&request, &denied));
            }
        }
        let mut headers = std::mem::take(&mut request.headers);
        let key = HeaderName::from_static("idempotency-key");
        if !headers.contains_key(&key) {
            let value = HeaderValue::from_str(&ctx.run_id.to_string())
                .expect("a UUID is a valid header value");
            headers.insert(key, value);
        }
        let mut builder = self
            .client
            .request(request.method.clone(), request.url.clone())
            .headers(headers);
        if let Some(json) = request.json.take() {
            builder = builder.json(&json);
        } else if let Some(body) = request.body.take() {
            builder = builder.body(body);
        }

        let exchange = async {
            let mut response = builder.send().await?;
            let status = response.status();
            let headers = header_map_to_json(response.headers());
            let is_json = is_json_content_type(response.headers());
            let mut body = Vec::new();
            let mut truncated = false;
            while let Some(chunk) = response.chunk().await? {
                let room = self.body_cap_bytes - body.len();
                if chunk.len() > room {
                    body.extend_from_slice(&chunk[..room]);
                    truncated = true;
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            Ok::<_, reqwest::Error>((
                status,
                headers,
                parse_body(&body, is_json, truncated),
                truncated,
            ))
        };
        let (status, headers, body, truncated) =
            match tokio::time::timeout(request.timeout, exchange).await {
                Err(_) => {
                    return Err(RunFailure::retryable(
                        "timeout",
                        format!(
                            "{} {} did not complete within {}",
                            request.method,
                            display_url(&request.url),
                            seconds(request.timeout)
                        ),
                    ))
                }
                Ok(Err(e)) => return Err(classify_reqwest_error(&e, &request)),
                Ok(Ok(exchange)) => exchange,
            };

        let mut result = json!({"status": status.as_u16(), "headers": headers, "body": body});
        if truncated {
            result["truncated"] = Value::Bool(true);
        }
        if status.is_success() || status.is_redirection() {
            return Ok(result);
        }

        let message = format!(
            "{} {} answered {}{}",
            request.method,
            display_url(&request.url),
            status,
            body_snippet(&result["body"])
        );
        let failure = if status.as_u16() == 429 {
            RunFailure::retryable("http_429", message)
        } else if status.is_server_error() {
            RunFailure::retryable("http_5xx", message)
        } else {
            RunFailure::permanent("http_4xx", message)
        };
        Err(failure.with_response(result))
    }
}

impl Tool for HttpTool {
    /// The step's `timeout_seconds` is the request timeout (code `timeout`), applied inside the call.
    fn bounded_by_step_timeout(&self) -> bool {
        false
    }

    fn run<'a>(
        &'a self,
        step: &'a Step,
        with: Value,
        ctx: &'a RunContext,
    ) -> BoxFuture<'a, Result<Value, RunFailure>> {
        Box::pin(async move { self.call(step, &with, ctx).await })
    }
}

/// Resolves host names and keeps only the addresses the policy allows.
struct PolicyResolver {
    policy: Arc<HttpPolicy>,
}

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let resolved: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut allowed = Vec::with_capacity(resolved.len());
            let mut denial = None;
            for addr in resolved {
                match policy.check(addr.ip()) {
                    Ok(()) => allowed.push(addr),
                    Err(d) => {
                        denial.get_or_insert(d);
                    }
                }
            }
            if allowed.is_empty() {
                if let Some(mut d) = denial {
                    d.host = Some(host);
                    return Err(Box::new(d) as Box<dyn std::error::Error + Send + Sync>);
                }
                return Err(format!("{host} has no address").into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

fn literal_ip(url: &reqwest::Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .parse()
        .ok()
}

/// A policy denial somewhere in an error's causes.
fn find_denial<'e>(error: &'e (dyn std::error::Error + 'static)) -> Option<&'e PolicyDenied> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        if let Some(d) = e.downcast_ref::<PolicyDenied>() {
            return Some(d);
        }
        current = e.source();
    }
    None
}

fn policy_failure(request: &HttpRequest, denied: &PolicyDenied) -> RunFailure {
    RunFailure::permanent(
        "policy",
        format!(
            "{} {} refused by the worker's HTTP policy: {denied}",
            request.method,
            display_url(&request.url)
        ),
    )
}

/// A rendered `http.request` `with`, checked.
struct HttpRequest {
    method: reqwest::Method,
    url: reqwest::Url,
    headers: HeaderMap,
    json: Option<Value>,
    body: Option<String>,
    timeout: Duration,
}

impl HttpRequest {
    fn from_with(step: &Step, with: &Value) -> Result<Self, RunFailure> {
        let bad = |message: String| RunFailure::permanent("template", message);

        let url = match with.get("url") {
            Some(Value::String(url)) => reqwest::Url::parse(url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
                .ok_or_else(|| bad(format!("with.url rendered to `{url}`, not an http(s) URL")))?,
            other => return Err(bad(format!("with.url rendered to {}", describe(other)))),
        };

        let method = match with.get("method") {
            None | Some(Value::Null) => reqwest::Method::GET,
            Some(Value::String(m)) if HTTP_METHODS.contains(&m.to_ascii_uppercase().as_str()) => {
                reqwest::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .expect("known methods are valid")
            }
            other => {
                return Err(bad(format!(
                    "with.method rendered to {}; expected one of {}",
                    describe(other),
                    HTTP_METHODS.join(", ")
                )))
            }
        };

        let mut headers = HeaderMap::new();
        match with.get("headers") {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                for (name, value) in map {
                    let text = match value {
                        Value::String(s) => s.clone(),
                        Value::Number(_) | Value::Bool(_) => value.to_string(),
                        other => {
                            return Err(bad(format!(
                                "header `{name}` rendered to {}",
                                describe(Some(other))
                            )))
                        }
                    };
                    let name = HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| bad(format!("`{name}` is not a valid header name")))?;
                    let value = HeaderValue::from_str(&text)
                        .map_err(|_| bad(format!("header `{name}` has an invalid value")))?;
                    headers.append(name, value);
                }
            }
            other => {
                return Err(bad(format!(
                    "with.headers rendered to {}, not an object of strings",
                    describe(other)
                )))
            }
        }

        let json = with.get("json").cloned();
        let body = match with.get("body") {
            None | Some(Value::Null) => None,
            Some(Value::String(body)) => Some(body.clone()),
            Some(other) => Some(other.to_string()),
        };

        let with_timeout = match with.get("timeout_seconds") {
            None | Some(Value::Null) => None,
            Some(value) => Some(
                value
                    .as_u64()
                    .filter(|t| (1..=MAX_TIMEOUT_SECONDS).contains(t))
                    .ok_or_else(|| {
                        bad(format!(
                            "with.timeout_seconds rendered to {}; expected 1 to {MAX_TIMEOUT_SECONDS}",
                            describe(Some(value))
                        ))
                    })?,
            ),
        };
        let timeout = step
            .timeout_seconds
            .or(with_timeout)
            .unwrap_or(DEFAULT_HTTP_TIMEOUT_SECONDS);

        Ok(Self {
            method,
            url,
            headers,
            json,
            body,
            timeout: Duration::from_secs(timeout),
        })
    }
}

fn classify_reqwest_error(error: &reqwest::Error, request: &HttpRequest) -> RunFailure {
    let target = format!("{} {}", request.method, display_url(&request.url));
    if let Some(denied) = find_denial(error) {
        return policy_failure(request, denied);
    }
    if error.is_timeout() {
        RunFailure::retryable("timeout", format!("{target} timed out"))
    } else if error.is_builder() {
        RunFailure::permanent("template", format!("{target}: invalid request: {error}"))
    } else {
        // Connection refused/reset, DNS, TLS, a body cut short: the far side may recover.
        RunFailure::retryable(
            "network",
            format!("{target} failed: {}", error_chain(error)),
        )
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The URL without its query string and credentials, which may carry secrets.
fn display_url(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

fn header_map_to_json(headers: &HeaderMap) -> Value {
    let mut map = Map::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match map.get_mut(name.as_str()) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&value);
            }
            _ => {
                map.insert(name.as_str().to_string(), Value::String(value));
            }
        }
    }
    Value::Object(map)
}

fn is_json_content_type(headers: &HeaderMap) -> bool {
    headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            let media = v
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            media == "application/json" || media.ends_with("+json")
        })
        .unwrap_or(false)
}

fn parse_body(body: &[u8], is_json: bool, truncated: bool) -> Value {
    if is_json && !truncated {
        if let Ok(value) = serde_json::from_slice(body) {
            return value;
        }
    }
    Value::String(String::from_utf8_lossy(body).into_owned())
}

fn body_snippet(body: &Value) -> String {
    let text = match body {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let mut snippet: String = text.chars().take(ERROR_BODY_SNIPPET_CHARS).collect();
    if text.chars().count() > ERROR_BODY_SNIPPET_CHARS {
        snippet.push('…');
    }
    format!(": {snippet}")
}
