//! The operator's console, `/ui`: a page and its plain ES modules, embedded
//! in the binary (nothing fetched at run time, no build step: the files in
//! `http/ui/` are what is served). The page drives the public API only;
//! it holds no data itself, so it is served without a token, also with
//! `protect_reads` — its API calls carry the token in a header.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

/// The page's policy: its own scripts, styles and API only; no inline
/// script or style, no frames, no forms posted elsewhere, no plugins.
pub const PAGE_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// Every other response's policy: nothing a browser would render from it
/// may load or run anything.
pub const API_POLICY: &str = "default-src 'none'; frame-ancestors 'none'";

const ASSETS: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("ui/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("ui/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("ui/style.css"),
    ),
];

fn asset(name: &str) -> Response {
    let Some((_, kind, body)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({ "error": format!("the console has no file {name:?}") })),
        )
            .into_response();
    };
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(PAGE_POLICY),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        *body,
    )
        .into_response()
}

/// `GET /ui`: to the page, whose relative links need the trailing slash.
pub async fn root() -> Redirect {
    Redirect::permanent("/ui/")
}

/// `GET /ui/`: the page.
pub async fn page() -> Response {
    asset("index.html")
}

/// `GET /ui/{file}`: one of its files.
pub async fn file(Path(name): Path<String>) -> Response {
    asset(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_of(name: &str) -> &'static str {
        ASSETS
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, _, body)| *body)
            .unwrap_or_default()
    }

    /// The page loads nothing inline, so the policy can refuse inline
    /// script: no `<script>` body, no `on*=` attribute, no `style=`; and
    /// its code never parses data as HTML.
    #[test]
    fn the_page_has_nothing_inline_for_its_policy_to_refuse() {
        let html = text_of("index.html");
        assert!(html.contains("<script type=\"module\" src=\"/ui/app.js\"></script>"));
        assert!(!html.contains("<script>"), "inline script");
        assert!(!html.contains(" onclick=") && !html.contains(" onload="));
        assert!(!html.contains(" style="));
        let js = text_of("app.js");
        assert!(js.len() > 1000);
        for sink in [
            ".innerHTML",
            ".outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!js.contains(sink), "{sink}");
        }
    }

    #[test]
    fn an_unknown_file_is_a_404_naming_it() {
        let r = asset("../secret");
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
}
