//! The page at `/`, compiled into the binary (no files at run time, no CDN): plain HTML,
//! CSS and JavaScript with no build step. Opus goes through the browser's WebCodecs
//! (`AudioEncoder`/`AudioDecoder`), Ogg pages are written and read by the script itself.

const INDEX: &[u8] = include_bytes!("page/index.html");
const APP: &[u8] = include_bytes!("page/app.js");
const STYLE: &[u8] = include_bytes!("page/style.css");
const WORKLET: &[u8] = include_bytes!("page/worklet.js");

/// The content type and bytes served at `path`, if it is one of the page's files.
pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    Some(match path {
        "/" | "/index.html" => ("text/html; charset=utf-8", INDEX),
        "/app.js" => ("text/javascript; charset=utf-8", APP),
        "/worklet.js" => ("text/javascript; charset=utf-8", WORKLET),
        "/style.css" => ("text/css; charset=utf-8", STYLE),
        _ => return None,
    })
}
