//! The operator console: a small dependency-free web app (plain ES modules and CSS, compiled into the binary)
//! served under /ui, and the read-only /console endpoints its pages need. Every action the console takes goes
//! through the ordinary REST endpoints, so validation and authorization have one source of truth.

pub mod api;
pub mod models;
pub mod stream;
pub mod timeline;

use std::sync::LazyLock;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
use sha2::{Digest, Sha256};

/// A static file of the console.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!("../../ui/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

static ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("console.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("describe.js", JS),
    asset!("overview.js", JS),
    asset!("tasks.js", JS),
    asset!("task_detail.js", JS),
    asset!("runs.js", JS),
    asset!("dead.js", JS),
    asset!("workers.js", JS),
    asset!("queues.js", JS),
    asset!("events.js", JS),
];

/// Strong validators of every asset, computed once.
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| format!("\"{}\"", hex::encode(&Sha256::digest(a.body)[..12])))
        .collect()
});

/// No inline script or style, nothing from another origin, never framed.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn serve(req: &HttpRequest, name: &str) -> HttpResponse {
    let Some(i) = ASSETS.iter().position(|a| a.name == name) else {
        return HttpResponse::NotFound().finish();
    };
    let asset = &ASSETS[i];
    let etag = &ETAGS[i];
    let matches = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut res = if matches {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    res.insert_header((header::ETAG, etag.as_str()))
        // Revalidate every time: a new binary serves new assets at once; unchanged ones cost a 304.
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .insert_header((
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        .insert_header((header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
        .insert_header((header::CONTENT_SECURITY_POLICY, CSP));
    if matches {
        return res.finish();
    }
    res.content_type(asset.content_type).body(asset.body)
}

/// GET /ui (and /ui/, which the edge serves as /ui): the console's page.
async fn index(req: HttpRequest) -> HttpResponse {
    serve(&req, "index.html")
}

/// GET /ui/{file}: a console asset.
async fn file(req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    serve(&req, path.as_str())
}

/// GET /: the console.
async fn root() -> HttpResponse {
    HttpResponse::Found()
        .insert_header((header::LOCATION, "/ui/"))
        .finish()
}

/// The console's routes: its pages and assets, and the read-only /console endpoints.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(root))
        .route("/ui", web::get().to(index))
        .route("/ui/{file}", web::get().to(file))
        .service(
            web::scope("/console")
                .route("/me", web::get().to(api::me))
                .route("/overview", web::get().to(api::overview))
                .route("/tasks", web::get().to(api::tasks))
                .route("/tasks/facets", web::get().to(api::facets))
                .route("/tasks/{id}/runs", web::get().to(api::task_runs))
                .route("/tasks/{id}/timeline", web::get().to(api::task_timeline))
                .route("/runs/stream", web::get().to(stream::stream))
                .route("/runs/{id}/attempts", web::get().to(api::attempts))
                .route("/dead", web::get().to(api::dead)),
        );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_non_empty_and_named_once() {
        let mut names: Vec<&str> = ASSETS.iter().map(|a| a.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ASSETS.len());
        assert!(ASSETS.iter().all(|a| !a.body.is_empty()));
    }

    #[test]
    fn the_page_loads_only_its_own_modules() {
        let html = std::str::from_utf8(ASSETS[0].body).unwrap();
        assert!(!html.contains("http://") && !html.contains("https://"));
        for a in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            let text = std::str::from_utf8(a.body).unwrap();
            for line in text.lines().filter(|l| l.starts_with("import ")) {
                let from = line.rsplit_once("from ").map(|(_, f)| f).unwrap_or(line);
                let target = from.trim_matches(|c| c == '\'' || c == '"' || c == ';' || c == ' ');
                let target = target.trim_start_matches("./");
                assert!(
                    ASSETS.iter().any(|x| x.name == target),
                    "{} imports {target}, which is not served",
                    a.name
                );
            }
        }
    }
}
