//! The HTTP client: JSON over the REST API, errors mapped to exit codes.

use std::time::Duration;

use reqwest::blocking::{Client as Http, RequestBuilder};
use reqwest::{Method, Url};
use serde_json::Value;

use crate::config::Target;
use crate::error::{CliError, CliResult};

pub struct Client {
    http: Http,
    base: Url,
    base_text: String,
    token: Option<String>,
}

impl Client {
    pub fn new(target: &Target, timeout: Duration) -> CliResult<Client> {
        let base = Url::parse(&target.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                CliError::Usage(format!(
                    "the server URL {:?} is not an http(s) URL",
                    target.url
                ))
            })?;
        let http = Http::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("orrery-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::Usage(format!("cannot build the HTTP client: {e}")))?;
        Ok(Client {
            http,
            base,
            base_text: target.url.clone(),
            token: target.token.clone(),
        })
    }

    pub fn base(&self) -> &str {
        &self.base_text
    }

    fn url(&self, path: &str, query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        let joined = format!("{}{}", self.base.path().trim_end_matches('/'), path);
        url.set_path(&joined);
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        url
    }

    fn request(&self, method: Method, path: &str, query: &[(&str, String)]) -> RequestBuilder {
        let mut req = self.http.request(method, self.url(path, query));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        req
    }

    /// Sends and returns (status, JSON body or Null); non-2xx becomes [`CliError::Api`].
    fn send(&self, req: RequestBuilder) -> CliResult<Value> {
        let resp = req.send().map_err(|e| self.connect_error(e))?;
        let status = resp.status().as_u16();
        let text = resp.text().map_err(|e| self.connect_error(e))?;
        let body: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let (code, message) = match &body {
            Value::Object(o) => (
                o.get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("error")
                    .to_string(),
                o.get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            ),
            Value::String(s) => ("error".into(), s.chars().take(300).collect()),
            _ => ("error".into(), String::new()),
        };
        Err(CliError::Api {
            status,
            code,
            message,
            details: body.get("details").cloned().unwrap_or(Value::Null),
        })
    }

    fn connect_error(&self, e: reqwest::Error) -> CliError {
        let mut cause = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            cause = s.to_string();
            source = s.source();
        }
        if e.is_timeout() {
            cause = format!("no answer in time ({cause})");
        }
        CliError::Connect {
            url: self.base_text.clone(),
            cause,
        }
    }

    pub fn get(&self, path: &str) -> CliResult<Value> {
        self.send(self.request(Method::GET, path, &[]))
    }

    pub fn get_query(&self, path: &str, query: &[(&str, String)]) -> CliResult<Value> {
        self.send(self.request(Method::GET, path, query))
    }

    pub fn post(&self, path: &str, body: Option<&Value>) -> CliResult<Value> {
        self.post_query(path, &[], body)
    }

    pub fn post_query(
        &self,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> CliResult<Value> {
        let mut req = self.request(Method::POST, path, query);
        if let Some(b) = body {
            req = req.json(b);
        }
        self.send(req)
    }

    pub fn patch_query(
        &self,
        path: &str,
        query: &[(&str, String)],
        body: &Value,
    ) -> CliResult<Value> {
        self.send(self.request(Method::PATCH, path, query).json(body))
    }

    pub fn delete(&self, path: &str) -> CliResult<Value> {
        self.send(self.request(Method::DELETE, path, &[]))
    }

    /// Every item of a paginated list (`{items, has_more}`), following `offset`.
    pub fn get_all(&self, path: &str, query: &[(&str, String)]) -> CliResult<Vec<Value>> {
        let mut items = Vec::new();
        loop {
            let mut q: Vec<(&str, String)> = query.to_vec();
            q.push(("limit", "200".into()));
            q.push(("offset", items.len().to_string()));
            let page = self.get_query(path, &q)?;
            let batch = page["items"].as_array().cloned().unwrap_or_default();
            let more = page["has_more"].as_bool().unwrap_or(false) && !batch.is_empty();
            items.extend(batch);
            if !more {
                return Ok(items);
            }
        }
    }
}
