//! The inspector's files, served at `/inspect/`: built from
//! `clients/js/inspector` into `crates/yrelay/inspect/` by the test command
//! (which checks that the committed files are what the build makes) and
//! compiled into the binary. They hold no data: the page asks the HTTP API,
//! with the admin token the user gives it.

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// Each file: its name under `/inspect/`, its type, its content.
const FILES: [(&str, &str, &str); 3] = [
    (
        "",
        "text/html; charset=utf-8",
        include_str!("../inspect/index.html"),
    ),
    (
        "inspect.js",
        "text/javascript; charset=utf-8",
        include_str!("../inspect/inspect.js"),
    ),
    (
        "inspect.css",
        "text/css; charset=utf-8",
        include_str!("../inspect/inspect.css"),
    ),
];

/// Nothing but this server: no script, style or request elsewhere.
const POLICY: &str = "default-src 'self'; img-src 'self' data: blob:; frame-ancestors 'none'";

pub fn routes() -> Router {
    let mut router = Router::new().route(
        "/inspect",
        get(|| async { Redirect::permanent("/inspect/") }),
    );
    for (name, kind, body) in FILES {
        router = router.route(
            &format!("/inspect/{name}"),
            get(move || async move { file(kind, body) }),
        );
    }
    router
}

fn file(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}
