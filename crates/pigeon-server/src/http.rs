//! The HTTP listener (`[http]`): `GET /health`, `GET /metrics` (Prometheus text), a one-line
//! index at `/`, the files under `static_dir` when it is set, and with `admin_token` the admin
//! API:
//!
//! - `GET /api/v1/stats`: the figures of `/metrics` as one JSON object, without the `pigeon_`
//!   prefix and `_total` suffix.
//! - `GET /api/v1/clients?limit=N&after=ID&contains=TEXT`: `{"total": T, "clients":
//!   [{"client_id", "connected"}], "next": ID or null}`, the first N (default 1000) sessions by
//!   client id, of those whose id holds TEXT and sorts after ID; `next` is the `after` of the
//!   next page while more remain.
//! - `GET /api/v1/clients/{client_id}`: one session, or 404: whether it is connected, its
//!   Session Expiry Interval, subscriptions (filter and options), the messages queued for it
//!   (and their bytes, topic and payload) and those in flight.
//! - `POST /api/v1/publish`: publishes one message or an array of them (`api_publish`).
//! - `DELETE /api/v1/clients/{client_id}`: disconnects the client (5.0: DISCONNECT 0x98
//!   Administrative action); 204, or 404 when it is not connected. Its session stays or ends by
//!   its expiry, as after any disconnection.
//!
//! - `GET /dashboard`: a page that shows these figures and sessions every 2 s, and disconnects
//!   a client at a click. It asks for the token (kept in the tab's `sessionStorage`) or reads
//!   it once from `#token=...`; the page itself holds no secret, and is 404 without a token
//!   configured, as the API.
//!
//! Every API request needs `Authorization: Bearer <admin_token>` (401 otherwise); without a
//! token configured the API answers 404.
//!
//! Static files: the request path is percent-decoded by the router, split on `/`, and refused
//! (404) if any part is `..`, hidden (starts with `.`) or holds a backslash or NUL; the joined
//! path is then resolved with symlinks and must still lie under the canonical `static_dir`, so
//! neither `../` nor a symlink reaches outside it. Files are read whole, up to
//! `MAX_STATIC_FILE` bytes; a directory serves its `index.html`.

use crate::connection::Shared;
use axum::extract::{Path as UrlPath, RawQuery, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use bytes::Bytes;
use pigeon_backends::webhook::{PayloadEncoding, WebhookStats};
use pigeon_codec::topic::valid_topic_name;
use pigeon_codec::{QoS, ReasonCode};
use pigeon_core::ClientQuery;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Larger files are not served (413): each is read whole into memory.
const MAX_STATIC_FILE: u64 = 32 * 1024 * 1024;

struct HttpState {
    /// Canonical `static_dir`.
    static_root: Option<PathBuf>,
    /// `Bearer <admin_token>`, as the Authorization header must read.
    admin_authorization: Option<String>,
    /// The broker, and the hooks an HTTP publish is told to.
    shared: Arc<Shared>,
    webhook: Option<Arc<WebhookStats>>,
    /// The dashboard's Content-Security-Policy (`dashboard_policy`).
    dashboard_policy: HeaderValue,
}

/// The admin dashboard, one self-contained page.
const DASHBOARD: &str = include_str!("dashboard.html");

/// Clients listed when the request names no limit.
const DEFAULT_CLIENT_LIMIT: usize = 1000;

/// Serves until `shutdown` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    static_root: Option<PathBuf>,
    shared: Arc<Shared>,
    webhook: Option<Arc<WebhookStats>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let state = Arc::new(HttpState {
        static_root,
        admin_authorization: shared
            .config
            .http
            .as_ref()
            .and_then(|h| h.admin_token.as_ref())
            .map(|token| format!("Bearer {token}")),
        shared,
        webhook,
        dashboard_policy: dashboard_policy(),
    });
    // The admin API, behind its token; the layer covers only these routes.
    let api = Router::new()
        .route("/api/v1/stats", get(api_stats))
        .route("/api/v1/clients", get(api_clients))
        .route("/api/v1/publish", post(api_publish))
        .route(
            "/api/v1/clients/{client_id}",
            get(api_client).delete(api_disconnect),
        )
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            require_admin,
        ));
    let router = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(api)
        .route("/dashboard", get(dashboard))
        .route("/", get(index))
        .route("/{*path}", get(static_file))
        .with_state(state);
    let stop = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    if let Err(e) = axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
    {
        warn!(error = %e, "HTTP listener stopped");
    }
}

async fn health() -> &'static str {
    "ok\n"
}

/// The broker's counters in the Prometheus text format.
/// What `/metrics` and `/api/v1/stats` report: name, Prometheus type, help and value.
fn figures(state: &HttpState) -> Vec<(&'static str, &'static str, &'static str, u64)> {
    let broker = &state.shared.broker;
    let s = &broker.stats;
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let mut figures: Vec<(&str, &str, &str, u64)> = vec![
        (
            "pigeon_messages_received_total",
            "counter",
            "Messages accepted for routing.",
            get(&s.messages_received),
        ),
        (
            "pigeon_messages_sent_total",
            "counter",
            "PUBLISH packets written to clients.",
            get(&s.messages_sent),
        ),
        (
            "pigeon_messages_dropped_total",
            "counter",
            "Deliveries dropped (queue full, offline QoS 0, too large).",
            get(&s.messages_dropped),
        ),
        (
            "pigeon_connections_accepted_total",
            "counter",
            "Connections accepted.",
            get(&s.connections_accepted),
        ),
        (
            "pigeon_connections",
            "gauge",
            "Connections open now.",
            get(&s.connections_current),
        ),
        (
            "pigeon_sessions",
            "gauge",
            "Sessions, connected or not.",
            broker.session_count() as u64,
        ),
        (
            "pigeon_subscriptions",
            "gauge",
            "Subscriptions.",
            broker.subscription_count() as u64,
        ),
        (
            "pigeon_retained_messages",
            "gauge",
            "Retained messages.",
            broker.retained_count() as u64,
        ),
    ];
    if broker.cluster().is_some() {
        figures.extend([
            (
                "pigeon_cluster_bus_connected",
                "gauge",
                "1 while the cluster bus is connected to Redis.",
                get(&s.bus_connected),
            ),
            (
                "pigeon_cluster_bus_connects_total",
                "counter",
                "Connections of the bus to Redis (reconnects included).",
                get(&s.bus_connects),
            ),
            (
                "pigeon_cluster_bus_published_total",
                "counter",
                "Messages this node put on the bus.",
                get(&s.bus_published),
            ),
            (
                "pigeon_cluster_bus_received_total",
                "counter",
                "Messages from other nodes or injected, routed here.",
                get(&s.bus_received),
            ),
            (
                "pigeon_cluster_bus_duplicates_total",
                "counter",
                "Bus messages seen again and dropped.",
                get(&s.bus_duplicates),
            ),
            (
                "pigeon_cluster_bus_malformed_total",
                "counter",
                "Bus messages that could not be read, dropped.",
                get(&s.bus_malformed),
            ),
            (
                "pigeon_cluster_bus_dropped_total",
                "counter",
                "Local messages that never reached the bus (outbox full).",
                get(&s.bus_dropped),
            ),
        ]);
    }
    if let Some(w) = &state.webhook {
        figures.extend([
            (
                "pigeon_webhook_sent_total",
                "counter",
                "Events the webhook's service accepted (2xx).",
                get(&w.sent),
            ),
            (
                "pigeon_webhook_failed_total",
                "counter",
                "Events given up on: a 4xx, or every attempt failed.",
                get(&w.failed),
            ),
            (
                "pigeon_webhook_dropped_total",
                "counter",
                "Events dropped because the webhook's queue was full.",
                get(&w.dropped),
            ),
            (
                "pigeon_webhook_queued",
                "gauge",
                "Events waiting or being sent.",
                get(&w.pending),
            ),
        ]);
    }
    figures
}

async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    use std::fmt::Write;
    let mut text = String::new();
    for (name, kind, help, value) in figures(&state) {
        let _ = write!(
            text,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        text,
    )
        .into_response()
}

/// A policy that lets the dashboard run its one inline script, by the script's SHA-256, and
/// nothing else: no other script, no form target, no frame around it.
fn dashboard_policy() -> HeaderValue {
    use sha2::Digest;
    let script = DASHBOARD
        .split_once("<script>")
        .and_then(|(_, rest)| rest.split_once("</script>"))
        .map_or("", |(script, _)| script);
    let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(script));
    let policy = format!(
        "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
         connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    );
    HeaderValue::from_str(&policy).expect("a policy of ASCII text")
}

/// What the admin API and the dashboard answer without `admin_token`.
fn admin_off() -> Response {
    (
        StatusCode::NOT_FOUND,
        "admin API off: set admin_token in [http]\n",
    )
        .into_response()
}

/// Lets a request through to the admin API only with the bearer token.
async fn require_admin(
    State(state): State<Arc<HttpState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(expected) = &state.admin_authorization else {
        return admin_off();
    };
    let headers = request.headers();
    let given = headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes)
        .unwrap_or_default();
    // In constant time, as the password file compares hashes: the time taken does not tell
    // how much matched.
    if bool::from(given.ct_eq(expected.as_bytes())) {
        return next.run(request).await;
    }
    warn!("admin API: request refused, wrong or missing bearer token");
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
        "wrong or missing bearer token\n",
    )
        .into_response()
}

fn json(value: serde_json::Value) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        value.to_string(),
    )
        .into_response()
}

async fn api_stats(State(state): State<Arc<HttpState>>) -> Response {
    let mut stats: serde_json::Map<String, serde_json::Value> = figures(&state)
        .into_iter()
        .map(|(name, _, _, value)| {
            let name = name.strip_prefix("pigeon_").unwrap_or(name);
            let name = name.strip_suffix("_total").unwrap_or(name);
            (name.to_owned(), value.into())
        })
        .collect();
    stats.insert("version".into(), env!("CARGO_PKG_VERSION").into());
    stats.insert(
        "uptime_seconds".into(),
        state.shared.broker.uptime().as_secs().into(),
    );
    json(stats.into())
}

/// The dashboard page, when the admin API is on. Its script and style are inline; the policy
/// allows that script (by its hash) and nothing else, and no framing (a click on Disconnect
/// cannot be borrowed by another site).
async fn dashboard(State(state): State<Arc<HttpState>>) -> Response {
    if state.admin_authorization.is_none() {
        return admin_off();
    }
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                state.dashboard_policy.clone(),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        DASHBOARD,
    )
        .into_response()
}

async fn api_clients(State(state): State<Arc<HttpState>>, RawQuery(query): RawQuery) -> Response {
    let bad = |why: String| (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response();
    let mut limit = DEFAULT_CLIENT_LIMIT;
    let mut after = None;
    let mut contains = String::new();
    for pair in query.as_deref().unwrap_or_default().split('&') {
        match pair.split_once('=') {
            Some(("limit", n)) => match n.parse() {
                Ok(n) => limit = n,
                Err(_) => return bad("limit: not a number".into()),
            },
            Some((key @ ("after" | "contains"), value)) => {
                let Some(value) = percent_decoded(value) else {
                    return bad(format!("{key}: not percent-encoded UTF-8"));
                };
                if key == "after" {
                    after = Some(value);
                } else {
                    contains = value;
                }
            }
            _ if pair.is_empty() => {}
            _ => {
                return (
                    StatusCode::BAD_REQUEST,
                    format!("unknown parameter: {pair}\n"),
                )
                    .into_response()
            }
        }
    }
    let page = state.shared.broker.clients(&ClientQuery {
        after: after.as_deref(),
        contains: &contains,
        limit,
    });
    let next = match (page.more, page.clients.last()) {
        (true, Some((last, _))) => serde_json::Value::from(last.as_str()),
        _ => serde_json::Value::Null,
    };
    let clients: Vec<serde_json::Value> = page
        .clients
        .into_iter()
        .map(|(client_id, connected)| {
            serde_json::json!({ "client_id": client_id.as_str(), "connected": connected })
        })
        .collect();
    json(serde_json::json!({ "total": page.total, "clients": clients, "next": next }))
}

/// A query string value: `+` is a space, `%XX` a byte; `None` unless the bytes are UTF-8.
/// Strict where the `percent-encoding` crate is lenient: a `%` without two hex digits is an
/// error, not a literal.
fn percent_decoded(value: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(value.len());
    let mut rest = value.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        match b {
            b'+' => bytes.push(b' '),
            b'%' => {
                // Two hex digits: `from_str_radix` alone would take a sign too ("%+1").
                let hex = rest
                    .get(..2)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
                bytes.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                rest = &rest[2..];
            }
            _ => bytes.push(b),
        }
    }
    String::from_utf8(bytes).ok()
}

async fn api_client(
    State(state): State<Arc<HttpState>>,
    UrlPath(client_id): UrlPath<String>,
) -> Response {
    let Some(client) = state.shared.broker.client(&client_id) else {
        return (StatusCode::NOT_FOUND, "no such session\n").into_response();
    };
    let subscriptions: Vec<serde_json::Value> = client
        .subscriptions
        .iter()
        .map(|(filter, options)| {
            serde_json::json!({
                "topic": filter.as_str(),
                "qos": options.qos as u8,
                "no_local": options.no_local,
                "retain_as_published": options.retain_as_published,
                "retain_handling": options.retain_handling as u8,
            })
        })
        .collect();
    json(serde_json::json!({
        "client_id": client_id,
        "connected": client.connected,
        "session_expiry_interval": client.expiry_interval,
        "subscriptions": subscriptions,
        "queued_messages": client.queued_messages,
        "queued_bytes": client.queued_bytes,
        "inflight": client.inflight,
    }))
}

/// One message of `POST /api/v1/publish`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    topic: String,
    #[serde(default)]
    payload: String,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    retain: bool,
    #[serde(default)]
    payload_encoding: PayloadEncoding,
}

/// A message ready to publish, or why the request cannot be one.
/// Held to the limits a client's PUBLISH is held to: topic levels, and the packet size.
fn publish_request(
    request: PublishRequest,
    limits: &crate::config::Limits,
) -> Result<(String, Bytes, QoS, bool), String> {
    let qos = QoS::from_u8(request.qos).ok_or(format!("qos {}: not 0, 1 or 2", request.qos))?;
    if !valid_topic_name(&request.topic) {
        return Err(format!("`{}` is not a valid topic name", request.topic));
    }
    if request.topic.starts_with('$') {
        return Err(format!(
            "`{}`: topics starting with $ are the broker's",
            request.topic
        ));
    }
    let levels = request.topic.split('/').count();
    if levels > limits.max_topic_levels {
        return Err(format!(
            "`{}`: {levels} topic levels, over limits.max_topic_levels ({})",
            request.topic, limits.max_topic_levels
        ));
    }
    let payload = match request.payload_encoding {
        PayloadEncoding::Plain => Bytes::from(request.payload),
        PayloadEncoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(request.payload.as_bytes())
            .map(Bytes::from)
            .map_err(|e| format!("payload: not base64 ({e})"))?,
    };
    if payload.len() + request.topic.len() > limits.max_packet_size as usize {
        return Err(format!(
            "{} bytes of payload: over limits.max_packet_size ({})",
            payload.len(),
            limits.max_packet_size
        ));
    }
    Ok((request.topic, payload, qos, request.retain))
}

/// `POST /api/v1/publish`: one message (`{"topic", "payload", "qos", "retain",
/// "payload_encoding"}`) or an array of them, published as from inside the broker. Answers
/// once the messages are routed and, for sessions that keep them, stored: `{"routed": N}`
/// (sessions it was queued for) for one, an array of those for an array. A request with any
/// invalid message publishes none of them (400, saying which and why).
async fn api_publish(State(state): State<Arc<HttpState>>, body: axum::body::Bytes) -> Response {
    let bad = |why: String| (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response();
    let value: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(e) => return bad(format!("not JSON: {e}")),
    };
    let single = !value.is_array();
    let items = match value {
        serde_json::Value::Array(items) => items,
        one => vec![one],
    };
    let mut messages = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let checked = serde_json::from_value(item)
            .map_err(|e| e.to_string())
            .and_then(|request| publish_request(request, &state.shared.config.limits));
        match checked {
            Ok(message) => messages.push(message),
            Err(why) if single => return bad(why),
            Err(why) => return bad(format!("message {i}: {why}")),
        }
    }
    let broker = &state.shared.broker;
    let mut results = Vec::with_capacity(messages.len());
    let mut wait_for = 0;
    for (topic, payload, qos, retain) in messages {
        match state
            .shared
            .publish_in_process(&topic, payload, qos, retain)
        {
            Ok(outcome) => {
                debug!(topic, qos = qos as u8, retain, "admin API: published");
                wait_for = wait_for.max(outcome.wait_for);
                results.push(serde_json::json!({ "routed": outcome.routed }));
            }
            // Checked above; kept for a rule added there later.
            Err(e) => return bad(e.to_string()),
        }
    }
    // What is acknowledged is kept: the answer waits for the store, as a PUBACK does. A store
    // that stopped (shutdown) cannot say so: 503, and the client may publish again.
    if let Some(mut committed) = broker.committed() {
        if committed.wait_for(|c| *c >= wait_for).await.is_err() {
            warn!("admin API: the store stopped before the published messages were stored");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "the store stopped before the messages were stored\n",
            )
                .into_response();
        }
    }
    if single {
        json(results.swap_remove(0))
    } else {
        json(results.into())
    }
}

async fn api_disconnect(
    State(state): State<Arc<HttpState>>,
    UrlPath(client_id): UrlPath<String>,
) -> Response {
    if state
        .shared
        .broker
        .disconnect_client(&client_id, ReasonCode::ADMINISTRATIVE_ACTION)
    {
        info!(client_id, "admin API: disconnecting the client");
        StatusCode::NO_CONTENT.into_response()
    } else {
        (StatusCode::NOT_FOUND, "not connected\n").into_response()
    }
}

async fn index(State(state): State<Arc<HttpState>>) -> Response {
    if let Some(root) = &state.static_root {
        if let Some(response) = file_response(root, root.join("index.html")).await {
            return response;
        }
    }
    concat!(
        "Pigeon ",
        env!("CARGO_PKG_VERSION"),
        ", an MQTT broker. GET /health answers ok.\n"
    )
    .into_response()
}

async fn static_file(
    State(state): State<Arc<HttpState>>,
    UrlPath(path): UrlPath<String>,
) -> Response {
    let not_found = || (StatusCode::NOT_FOUND, "not found\n").into_response();
    let Some(root) = &state.static_root else {
        return not_found();
    };
    let Some(relative) = safe_relative(&path) else {
        debug!(path, "refused static path");
        return not_found();
    };
    file_response(root, root.join(relative))
        .await
        .unwrap_or_else(not_found)
}

/// The request path as a relative path with only normal parts; `None` if any part could leave
/// the directory or names a hidden file.
fn safe_relative(path: &str) -> Option<PathBuf> {
    let mut relative = PathBuf::new();
    for part in path.split('/') {
        if part.is_empty() {
            continue;
        }
        if part.starts_with('.') || part.contains(['\\', '\0']) {
            return None;
        }
        relative.push(part);
    }
    Some(relative)
}

/// The file at `path` (or its `index.html`), if it resolves to a file under `root`.
async fn file_response(root: &Path, path: PathBuf) -> Option<Response> {
    let mut resolved = tokio::fs::canonicalize(&path).await.ok()?;
    if !resolved.starts_with(root) {
        debug!(path = %path.display(), "static path resolves outside static_dir");
        return None;
    }
    let mut meta = tokio::fs::metadata(&resolved).await.ok()?;
    if meta.is_dir() {
        resolved = tokio::fs::canonicalize(resolved.join("index.html"))
            .await
            .ok()?;
        if !resolved.starts_with(root) {
            return None;
        }
        meta = tokio::fs::metadata(&resolved).await.ok()?;
    }
    if !meta.is_file() {
        return None;
    }
    if meta.len() > MAX_STATIC_FILE {
        return Some((StatusCode::PAYLOAD_TOO_LARGE, "file too large\n").into_response());
    }
    let body = match tokio::fs::read(&resolved).await {
        Ok(body) => body,
        Err(e) => {
            warn!(path = %resolved.display(), error = %e, "cannot read static file");
            return None;
        }
    };
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(&resolved)),
    );
    Some(response)
}

fn content_type(path: &Path) -> &'static str {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match extension.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "ico" => "image/x-icon",
        "webp" => "image/webp",
        "wasm" => "application/wasm",
        "woff2" => "font/woff2",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_and_hidden_parts_are_refused() {
        assert_eq!(safe_relative("a/b.js"), Some(PathBuf::from("a/b.js")));
        assert_eq!(safe_relative("//a//b"), Some(PathBuf::from("a/b")));
        assert_eq!(safe_relative("a/../../etc/passwd"), None);
        assert_eq!(safe_relative(".."), None);
        assert_eq!(safe_relative(".git/config"), None);
        assert_eq!(safe_relative("a\\..\\b"), None);
        assert_eq!(safe_relative("a\0b"), None);
    }

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(percent_decoded("a%2Fb+c").as_deref(), Some("a/b c"));
        assert_eq!(percent_decoded("%E4%BD%A0").as_deref(), Some("\u{4f60}"));
        assert_eq!(percent_decoded("%zz"), None);
        assert_eq!(percent_decoded("%4"), None);
        assert_eq!(percent_decoded("%+1"), None);
        assert_eq!(percent_decoded("%FF"), None);
    }

    #[test]
    fn content_types() {
        assert_eq!(
            content_type(Path::new("x/mqtt.min.js")),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            content_type(Path::new("INDEX.HTML")),
            "text/html; charset=utf-8"
        );
        assert_eq!(content_type(Path::new("blob")), "application/octet-stream");
    }
}
