//! HTTP routing and the REST verbs over the store.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt as _, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

use super::admission;
use super::attach;
use super::kubelet::record_event;
use super::rbac::{Attributes, User};
use super::resources::{self, ResourceDef};
use super::selector::{FieldSelector, LabelSelector};
use super::status::{self, ApiError};
use super::store::{name_of, name_suffix, Change, EventType, WatchStart};
use super::table::{self, Include};
use super::time;
use super::Shared;

pub type Body = BoxBody<Bytes, std::io::Error>;

/// Largest request body accepted.
const BODY_LIMIT: usize = 3 << 20;
/// Watches end after this long unless `timeoutSeconds` says otherwise (as minRequestTimeout does).
const WATCH_DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);
const BOOKMARK_EVERY: Duration = Duration::from_secs(60);
/// How long a namespace deletion waits for its pods to go.
const NAMESPACE_DRAIN: Duration = Duration::from_secs(120);

fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into()).map_err(|never: Infallible| match never {}).boxed()
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    json_typed(code, v, "application/json")
}

fn json_typed(code: u16, v: &Value, content_type: &str) -> Response<Body> {
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if let Ok(ct) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    r
}

pub fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.to_status())
}

fn text(code: u16, body: &str) -> Response<Body> {
    let mut r = Response::new(full(body.to_string()));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// A streaming body fed by a channel; sending fails once the client has gone.
fn channel_body() -> (mpsc::Sender<Bytes>, Body) {
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(Frame::data(b)), rx))
    });
    (tx, StreamBody::new(stream).boxed())
}

/// Everything a handler needs to know about the request besides its body.
struct Ctx {
    user: User,
    query: HashMap<String, String>,
    accept: String,
    content_type: String,
}

impl Ctx {
    fn q(&self, k: &str) -> Option<&str> {
        self.query.get(k).map(String::as_str).filter(|s| !s.is_empty())
    }
    fn q_true(&self, k: &str) -> bool {
        matches!(self.q(k), Some("true" | "1"))
    }
    fn wants_table(&self) -> bool {
        self.accept.split(',').any(|m| m.contains("as=Table"))
    }
    fn wants_metadata(&self) -> bool {
        self.accept.split(',').any(|m| m.contains("as=PartialObjectMetadata"))
    }
    fn include(&self) -> Include {
        Include::parse(self.q("includeObject"))
    }
    fn dry_run(&self) -> bool {
        self.q("dryRun").is_some()
    }
}

/// Serves one request.
pub async fn handle(sh: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = match route(&sh, req).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    };
    log::debug!("{method} {path} -> {}", resp.status());
    Ok(resp)
}

fn header_str(req: &Request<Incoming>, name: header::HeaderName) -> String {
    req.headers().get_all(name).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(", ")
}

fn version_info() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "emulationMajor": "1",
        "emulationMinor": "33",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "32",
        "gitVersion": "v1.33.0",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-04-23T00:00:00Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|m| {
        let m = m.replace(' ', "");
        m.starts_with("application/json") && m.contains("as=APIGroupDiscoveryList") && m.split(';').any(|p| p == "v=v2")
    })
}

async fn route(sh: &Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/healthz" | "/livez" | "/readyz" => return Ok(text(200, "ok")),
        "/version" | "/version/" => return Ok(json_response(200, &version_info())),
        _ => {}
    }
    let user = authenticate(sh, &req)?;
    let query: HashMap<String, String> =
        form_urlencoded::parse(req.uri().query().unwrap_or_default().as_bytes()).into_owned().collect();
    let ctx = Ctx {
        user,
        query,
        accept: header_str(&req, header::ACCEPT),
        content_type: header_str(&req, header::CONTENT_TYPE),
    };
    let segs: Vec<String> = path.split('/').filter(|s| !s.is_empty()).map(String::from).collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let get_only =
        |r: Response<Body>| if req.method() == Method::GET { Ok(r) } else { Err(ApiError::method_not_allowed()) };
    match segs.as_slice() {
        ["api"] => {
            if wants_aggregated(&ctx.accept) {
                return get_only(json_typed(200, &resources::aggregated(true), resources::AGGREGATED_V2));
            }
            get_only(json_response(200, &resources::api_versions(&sh.addr)))
        }
        ["apis"] => {
            if wants_aggregated(&ctx.accept) {
                return get_only(json_typed(200, &resources::aggregated(false), resources::AGGREGATED_V2));
            }
            get_only(json_response(200, &resources::api_group_list()))
        }
        ["api", "v1"] => get_only(json_response(200, &resources::api_resource_list(""))),
        ["apis", g] if resources::GROUPS.contains(g) => get_only(json_response(200, &resources::api_group(g))),
        ["apis", g, v] if resources::group_known(g, v) => {
            get_only(json_response(200, &resources::api_resource_list(g)))
        }
        ["api", "v1", rest @ ..] => resource(sh, req, ctx, "", "v1", rest).await,
        ["apis", g, v, rest @ ..] if resources::group_known(g, v) => resource(sh, req, ctx, g, v, rest).await,
        ["apis", ..] | ["api", ..] => Err(ApiError::no_such_resource()),
        ["openapi", ..] => Err(ApiError::no_such_resource()),
        _ => Ok(text(404, "404 page not found\n")),
    }
}

fn authenticate(sh: &Shared, req: &Request<Incoming>) -> Result<User, ApiError> {
    let auth = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let token = auth.strip_prefix("Bearer ").map(str::trim).ok_or_else(ApiError::unauthorized)?;
    sh.rbac().authenticate(token).ok_or_else(ApiError::unauthorized)
}

/// A resource request after the path was taken apart.
struct Target {
    res: &'static ResourceDef,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_target(group: &str, version: &str, rest: &[&str]) -> Result<Target, ApiError> {
    let (ns, rest) = match rest {
        ["namespaces", ns, r, tail @ ..] if resources::find(group, version, r).is_some_and(|d| d.namespaced) => {
            (Some(ns.to_string()), [&[*r][..], tail].concat())
        }
        _ => (None, rest.to_vec()),
    };
    let (plural, name, sub) = match rest.as_slice() {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(n.to_string()), None),
        [p, n, s] => (*p, Some(n.to_string()), Some(s.to_string())),
        _ => return Err(ApiError::no_such_resource()),
    };
    let res = resources::find(group, version, plural).ok_or_else(ApiError::no_such_resource)?;
    if let Some(s) = &sub {
        if res.subresource(s).is_none() {
            return Err(ApiError::no_such_resource());
        }
    }
    if !res.namespaced && ns.is_some() {
        return Err(ApiError::no_such_resource());
    }
    Ok(Target { res, ns, name, sub })
}

async fn read_bytes(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let limited = http_body_util::Limited::new(req.into_body(), BODY_LIMIT);
    Ok(limited.collect().await.map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?.to_bytes())
}

const NO_PROTOBUF: &str = "the body of the request was in an unknown format - accepted media types include: \
application/json, application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json \
(this test API server decodes protobuf only for SelfSubjectAccessReview)";

async fn read_body(req: Request<Incoming>, ctx: &Ctx) -> Result<Value, ApiError> {
    if ctx.content_type.contains("protobuf") {
        return Err(ApiError::unsupported_media_type(NO_PROTOBUF));
    }
    let bytes = read_bytes(req).await?;
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request(format!("the object provided is unrecognized or could not be decoded: {e}")))
}

/// A SelfSubjectAccessReview body: JSON, or protobuf as kubectl's typed client sends it.
async fn read_review(req: Request<Incoming>, ctx: &Ctx) -> Result<Value, ApiError> {
    if !ctx.content_type.contains("protobuf") {
        return read_body(req, ctx).await;
    }
    let bytes = read_bytes(req).await?;
    let (_, kind, raw) = super::proto::unwrap(&bytes).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if kind != "SelfSubjectAccessReview" {
        return Err(ApiError::unsupported_media_type(NO_PROTOBUF));
    }
    super::proto::self_subject_access_review(&raw).map_err(|e| ApiError::bad_request(e.to_string()))
}

async fn resource(
    sh: &Arc<Shared>,
    req: Request<Incoming>,
    ctx: Ctx,
    group: &str,
    version: &str,
    rest: &[&str],
) -> Result<Response<Body>, ApiError> {
    let t = parse_target(group, version, rest)?;
    let method = req.method().clone();
    let is_watch = ctx.q_true("watch");
    let verb = match (&method, &t.name, t.sub.as_deref()) {
        (&Method::GET, None, _) if is_watch => "watch",
        (&Method::GET, None, _) => "list",
        (&Method::GET, Some(_), _) => "get",
        (&Method::POST, None, None) => "create",
        (&Method::POST, Some(_), Some("attach")) => "create",
        (&Method::PUT, Some(_), _) => "update",
        (&Method::PATCH, Some(_), _) => "patch",
        (&Method::DELETE, Some(_), None) => "delete",
        (&Method::DELETE, None, None) => "deletecollection",
        _ => return Err(ApiError::method_not_allowed()),
    };
    if !t.res.verbs.contains(&verb) && t.sub.is_none() {
        return Err(ApiError::method_not_allowed());
    }
    if t.res.namespaced
        && t.ns.is_none()
        && !(verb == "list" || verb == "watch")
        && !t.res.is("authorization.k8s.io", "selfsubjectaccessreviews")
    {
        return Err(ApiError::no_such_resource());
    }
    let attrs = Attributes {
        verb: verb.to_string(),
        group: t.res.group.to_string(),
        resource: t.res.plural.to_string(),
        subresource: t.sub.clone().unwrap_or_default(),
        namespace: t.ns.clone().unwrap_or_default(),
        name: t.name.clone().unwrap_or_default(),
    };
    // Every authenticated user may review its own access (system:basic-user).
    let self_review = t.res.is("authorization.k8s.io", "selfsubjectaccessreviews");
    if !self_review && !sh.rbac().authorize(&ctx.user, &attrs) {
        return Err(ApiError::forbidden(t.res, &attrs.name, &attrs.denial(&ctx.user.name)));
    }
    let ns = t.ns.clone().unwrap_or_default();
    match (verb, t.sub.as_deref()) {
        ("list", _) => list(sh, &ctx, t.res, t.ns.as_deref()),
        ("watch", _) => watch(sh, &ctx, t.res, t.ns.as_deref(), None),
        ("get", Some("attach")) | ("create", Some("attach")) => {
            attach_upgrade(sh, req, &ctx, &ns, t.name.as_deref().unwrap_or_default()).await
        }
        ("get", Some("log")) => logs(sh, &ctx, &ns, t.name.as_deref().unwrap_or_default()),
        ("get", _) => {
            let name = t.name.unwrap_or_default();
            if is_watch {
                return watch(sh, &ctx, t.res, t.ns.as_deref(), Some(&name));
            }
            let obj = sh.store.get(t.res, &ns, &name)?;
            Ok(render_one(&ctx, t.res, &obj, 200))
        }
        ("create", _) if self_review => {
            let body = read_review(req, &ctx).await?;
            Ok(json_response(201, &self_subject_access_review(sh, &ctx.user, body)))
        }
        ("create", _) => {
            let body = read_body(req, &ctx).await?;
            let obj = create(sh, &ctx, t.res, t.ns.as_deref(), body)?;
            Ok(json_response(201, &obj))
        }
        ("update", sub) => {
            let body = read_body(req, &ctx).await?;
            let name = t.name.unwrap_or_default();
            let obj = update(sh, &ctx, t.res, &ns, &name, sub, Edit::Replace(body))?;
            Ok(json_response(200, &obj))
        }
        ("patch", sub) => {
            let patch_type = patch_type(&ctx.content_type)?;
            let body = read_body(req, &ctx).await?;
            let name = t.name.unwrap_or_default();
            if patch_type == PatchType::Apply && sh.store.get(t.res, &ns, &name).is_err() && sub.is_none() {
                let mut body = body;
                body["metadata"]["name"] = json!(name);
                let obj = create(sh, &ctx, t.res, t.ns.as_deref(), body)?;
                return Ok(json_response(201, &obj));
            }
            let obj = update(sh, &ctx, t.res, &ns, &name, sub, Edit::Patch(patch_type, body))?;
            Ok(json_response(200, &obj))
        }
        ("delete", _) => {
            let body = read_body(req, &ctx).await?;
            delete(sh, &ctx, t.res, &ns, &t.name.unwrap_or_default(), &body)
        }
        ("deletecollection", _) => {
            let body = read_body(req, &ctx).await?;
            delete_collection(sh, &ctx, t.res, t.ns.as_deref(), &body)
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// One object in the representation the client asked for.
fn render_one(ctx: &Ctx, res: &ResourceDef, obj: &Value, code: u16) -> Response<Body> {
    let rv = obj.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or_default();
    if ctx.wants_table() {
        return json_typed(
            code,
            &table::table(res, std::slice::from_ref(obj), rv, ctx.include(), true),
            "application/json;as=Table;v=v1;g=meta.k8s.io",
        );
    }
    if ctx.wants_metadata() {
        return json_response(code, &table::partial_metadata(obj));
    }
    json_response(code, obj)
}

fn selectors(ctx: &Ctx, res: &ResourceDef) -> Result<(LabelSelector, FieldSelector), ApiError> {
    Ok((
        LabelSelector::parse(ctx.q("labelSelector").unwrap_or_default())?,
        FieldSelector::parse(ctx.q("fieldSelector").unwrap_or_default(), res)?,
    ))
}

/// Items of a list lose their kind and apiVersion, as in the real server's typed lists.
fn list_item(mut v: Value) -> Value {
    if let Some(m) = v.as_object_mut() {
        m.remove("kind");
        m.remove("apiVersion");
    }
    v
}

fn list(sh: &Shared, ctx: &Ctx, res: &'static ResourceDef, ns: Option<&str>) -> Result<Response<Body>, ApiError> {
    let (ls, fs) = selectors(ctx, res)?;
    let (items, rv) = sh.store.list(res, ns, |o| ls.matches(o) && fs.matches(o));
    // Pagination: the continue token is the offset into the (name-ordered) result.
    let offset: usize = match ctx.q("continue") {
        Some(tok) => tok.strip_prefix("offset-").and_then(|o| o.parse().ok()).ok_or_else(|| {
            ApiError::bad_request(
                "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
            )
        })?,
        None => 0,
    };
    let limit: usize = ctx.q("limit").and_then(|l| l.parse().ok()).filter(|l| *l > 0).unwrap_or(usize::MAX);
    let total = items.len();
    let page: Vec<Value> = items.into_iter().skip(offset).take(limit).collect();
    let next = offset.saturating_add(page.len());
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if next < total {
        meta["continue"] = json!(format!("offset-{next}"));
        meta["remainingItemCount"] = json!(total - next);
    }
    if ctx.wants_table() {
        let mut t = table::table(res, &page, &rv.to_string(), ctx.include(), true);
        t["metadata"] = meta;
        return Ok(json_typed(200, &t, "application/json;as=Table;v=v1;g=meta.k8s.io"));
    }
    if ctx.wants_metadata() {
        let items: Vec<Value> = page.iter().map(|o| list_item(table::partial_metadata(o))).collect();
        return Ok(json_response(
            200,
            &json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "items": items}),
        ));
    }
    let items: Vec<Value> = page.into_iter().map(list_item).collect();
    Ok(json_response(
        200,
        &json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(), "metadata": meta, "items": items}),
    ))
}

/// How a watch shows objects.
#[derive(Clone, Copy)]
enum WatchFormat {
    Object,
    Metadata,
    Table(Include),
}

fn watch(
    sh: &Shared,
    ctx: &Ctx,
    res: &'static ResourceDef,
    ns: Option<&str>,
    name: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let (ls, mut fs) = selectors(ctx, res)?;
    if let Some(n) = name {
        fs = FieldSelector::parse(&format!("metadata.name={n}"), res)?;
    }
    let send_initial = ctx.q_true("sendInitialEvents");
    let bookmarks = ctx.q_true("allowWatchBookmarks");
    let start = match ctx.q("resourceVersion") {
        None | Some("0") => WatchStart::Now,
        Some(_) if send_initial => WatchStart::Now,
        Some(rv) => {
            WatchStart::After(rv.parse().map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?)
        }
    };
    let timeout =
        ctx.q("timeoutSeconds").and_then(|t| t.parse().ok()).map_or(WATCH_DEFAULT_TIMEOUT, Duration::from_secs);
    let format = if ctx.wants_table() {
        WatchFormat::Table(ctx.include())
    } else if ctx.wants_metadata() {
        WatchFormat::Metadata
    } else {
        WatchFormat::Object
    };
    let content_type = match format {
        WatchFormat::Table(_) => "application/json;as=Table;v=v1;g=meta.k8s.io",
        _ => "application/json",
    };
    let (tx, body) = channel_body();
    let started = sh.store.watch(res, ns, start);
    tokio::spawn(async move {
        let mut w = Watcher { tx, res, ls, fs, format, first: true, last_rv: 0 };
        let (replay, mut rx, rv) = match started {
            Ok(s) => s,
            Err(e) => {
                let _ = w.send("ERROR", e.to_status()).await;
                return;
            }
        };
        w.last_rv = rv;
        for c in replay {
            if !w.change(&c).await {
                return;
            }
        }
        if send_initial && bookmarks {
            let mut b = w.bookmark(rv);
            b["metadata"]["annotations"] = json!({"k8s.io/initial-events-end": "true"});
            if !w.send("BOOKMARK", b).await {
                return;
            }
        }
        let end = tokio::time::sleep(timeout);
        tokio::pin!(end);
        let mut tick = tokio::time::interval(BOOKMARK_EVERY);
        tick.tick().await;
        loop {
            tokio::select! {
                r = rx.recv() => match r {
                    Ok(c) => {
                        w.last_rv = c.rv;
                        if !w.change(&c).await {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let e = ApiError::gone("The resourceVersion for the provided watch is too old.");
                        let _ = w.send("ERROR", e.to_status()).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick(), if bookmarks && !matches!(format, WatchFormat::Table(_)) => {
                    let b = w.bookmark(w.last_rv);
                    if !w.send("BOOKMARK", b).await {
                        return;
                    }
                }
                _ = w.tx.closed() => return,
                _ = &mut end => return,
            }
        }
    });
    let mut r = Response::new(body);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(r)
}

struct Watcher {
    tx: mpsc::Sender<Bytes>,
    res: &'static ResourceDef,
    ls: LabelSelector,
    fs: FieldSelector,
    format: WatchFormat,
    first: bool,
    last_rv: u64,
}

impl Watcher {
    fn matches(&self, obj: &Value) -> bool {
        self.ls.matches(obj) && self.fs.matches(obj)
    }

    fn bookmark(&self, rv: u64) -> Value {
        json!({"kind": self.res.kind, "apiVersion": self.res.api_version(), "metadata": {"resourceVersion": rv.to_string(), "creationTimestamp": null}})
    }

    /// Sends the event for a change if it concerns this watch; false once the client is gone.
    async fn change(&mut self, c: &Change) -> bool {
        if !c.res.is(self.res.group, self.res.plural) {
            return true;
        }
        let now = self.matches(&c.object);
        let before = c.old.as_ref().is_some_and(|o| self.matches(o));
        // A modification that moves an object into or out of the selection is an ADDED or DELETED for this watch.
        let kind = match (c.kind, before, now) {
            (EventType::Added, _, true) => EventType::Added,
            (EventType::Deleted, _, true) => EventType::Deleted,
            (EventType::Modified, true, true) => EventType::Modified,
            (EventType::Modified, false, true) => EventType::Added,
            (EventType::Modified, true, false) => EventType::Deleted,
            _ => return true,
        };
        let obj = match self.format {
            WatchFormat::Object => c.object.clone(),
            WatchFormat::Metadata => table::partial_metadata(&c.object),
            WatchFormat::Table(include) => {
                let rv = c.rv.to_string();
                let t = table::table(self.res, std::slice::from_ref(&c.object), &rv, include, self.first);
                self.first = false;
                t
            }
        };
        self.send(kind.as_str(), obj).await
    }

    async fn send(&self, kind: &str, object: Value) -> bool {
        let mut line = json!({"type": kind, "object": object}).to_string();
        line.push('\n');
        self.tx.send(Bytes::from(line)).await.is_ok()
    }
}

fn namespace_res() -> &'static ResourceDef {
    resources::by_name("", "namespaces").expect("namespaces is a built-in resource")
}

fn pods_res() -> &'static ResourceDef {
    resources::by_name("", "pods").expect("pods is a built-in resource")
}

fn nodes_res() -> &'static ResourceDef {
    resources::by_name("", "nodes").expect("nodes is a built-in resource")
}

/// Creates an object: checks, name generation, defaults, admission, scheduling.
fn create(
    sh: &Shared,
    ctx: &Ctx,
    res: &'static ResourceDef,
    ns: Option<&str>,
    mut obj: Value,
) -> Result<Value, ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request("the object provided is unrecognized or could not be decoded"));
    }
    if let Some(av) = obj.get("apiVersion").and_then(Value::as_str) {
        if av != res.api_version() {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                res.api_version()
            )));
        }
    }
    if let Some(kind) = obj.get("kind").and_then(Value::as_str) {
        if kind != res.kind {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({kind}) does not match the expected kind ({})",
                res.kind
            )));
        }
    }
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    if res.namespaced {
        let ns = ns.unwrap_or_default();
        match obj.pointer("/metadata/namespace").and_then(Value::as_str) {
            Some(n) if !n.is_empty() && n != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            _ => obj["metadata"]["namespace"] = json!(ns),
        }
        let namespace = sh.store.get(namespace_res(), "", ns)?;
        if namespace.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating") {
            return Err(ApiError::forbidden(
                res,
                name_of(&obj),
                &format!("unable to create new content in namespace {ns} because it is being terminated"),
            ));
        }
    }
    if name_of(&obj).is_empty() {
        if let Some(prefix) = obj.pointer("/metadata/generateName").and_then(Value::as_str).filter(|p| !p.is_empty()) {
            obj["metadata"]["name"] = json!(format!("{prefix}{}", name_suffix()));
        }
    }
    let mut scheduled = false;
    match (res.group, res.plural) {
        ("", "pods") => {
            admission::default_pod(&mut obj);
            admission::validate_pod(&obj)?;
            let namespace = sh.store.get(namespace_res(), "", ns.unwrap_or_default())?;
            admission::check_pod_security(&obj, &namespace)?;
            scheduled = schedule(sh, &mut obj);
        }
        ("", "namespaces") => {
            admission::validate_name("Namespace", &obj)?;
            let name = name_of(&obj).to_string();
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
            obj["status"] = json!({"phase": "Active"});
        }
        ("", "services") => {
            admission::validate_name(res.kind, &obj)?;
            let spec = &mut obj["spec"];
            if spec.get("type").is_none() {
                spec["type"] = json!("ClusterIP");
            }
            if spec.get("clusterIP").is_none() {
                let b = super::store::random_bytes::<2>();
                spec["clusterIP"] = json!(format!("10.96.{}.{}", b[0], b[1].max(1)));
                spec["clusterIPs"] = json!([spec["clusterIP"]]);
            }
            if spec.get("sessionAffinity").is_none() {
                spec["sessionAffinity"] = json!("None");
            }
            obj["status"] = json!({"loadBalancer": {}});
        }
        _ => admission::validate_name(res.kind, &obj)?,
    }
    if ctx.dry_run() {
        return Ok(obj);
    }
    let created = sh.store.create(res, obj)?;
    if scheduled {
        let node = created.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or_default();
        let msg =
            format!("Successfully assigned {}/{} to {node}", super::store::namespace_of(&created), name_of(&created));
        record_event(&sh.store, &created, "Normal", "Scheduled", &msg, "default-scheduler", None);
    }
    Ok(created)
}

/// The scheduler: binds an unbound pod to the first ready, schedulable node.
/// True if it bound the pod (the Scheduled event follows once it is stored).
fn schedule(sh: &Shared, pod: &mut Value) -> bool {
    if pod.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty()) {
        return false;
    }
    let (nodes, _) = sh.store.list(nodes_res(), None, |n| {
        n.pointer("/spec/unschedulable") != Some(&json!(true))
            && n.pointer("/status/conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
    });
    match nodes.first() {
        Some(node) => {
            pod["spec"]["nodeName"] = json!(name_of(node));
            true
        }
        None => {
            pod["status"]["conditions"] = json!([{
                "type": "PodScheduled", "status": "False", "lastProbeTime": null,
                "lastTransitionTime": time::now(), "reason": "Unschedulable",
                "message": "0/0 nodes are available: no nodes available to schedule pods.",
            }]);
            false
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PatchType {
    Merge,
    Strategic,
    Json,
    Apply,
}

fn patch_type(ct: &str) -> Result<PatchType, ApiError> {
    let base = ct.split(';').next().unwrap_or_default().trim();
    Ok(match base {
        "application/merge-patch+json" => PatchType::Merge,
        "application/strategic-merge-patch+json" => PatchType::Strategic,
        "application/json-patch+json" => PatchType::Json,
        "application/apply-patch+yaml" | "application/apply-patch+cbor" => PatchType::Apply,
        other => {
            return Err(ApiError::unsupported_media_type(format!(
                "the server does not support this patch type: {other:?}"
            )))
        }
    })
}

enum Edit {
    Replace(Value),
    Patch(PatchType, Value),
}

/// PUT or PATCH of an object or its status/ephemeralcontainers subresource.
fn update(
    sh: &Shared,
    ctx: &Ctx,
    res: &'static ResourceDef,
    ns: &str,
    name: &str,
    sub: Option<&str>,
    edit: Edit,
) -> Result<Value, ApiError> {
    if let Edit::Replace(body) = &edit {
        if let Some(n) = body.pointer("/metadata/name").and_then(Value::as_str) {
            if n != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )));
            }
        }
    }
    if matches!(edit, Edit::Patch(PatchType::Apply, _)) && ctx.q("fieldManager").is_none() {
        return Err(ApiError::invalid(
            "PatchOptions",
            "",
            &[status::FieldError::required("fieldManager", "is required for apply patch")],
        ));
    }
    let namespace = if res.is("", "pods") { Some(sh.store.get(namespace_res(), "", ns)?) } else { None };
    let has_status = res.subresource("status").is_some();
    let dry_run = ctx.dry_run();
    let mut result = None;
    let apply = |cur: &mut Value| -> Result<(), ApiError> {
        let old = cur.clone();
        let mut cand = match &edit {
            Edit::Replace(body) => {
                let want = body.pointer("/metadata/resourceVersion").and_then(Value::as_str).filter(|s| !s.is_empty());
                let have = old.pointer("/metadata/resourceVersion").and_then(Value::as_str);
                if want.is_some_and(|w| Some(w) != have) {
                    return Err(ApiError::conflict(res, name));
                }
                let mut b = body.clone();
                b["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
                b
            }
            Edit::Patch(t, patch) => {
                let mut v = old.clone();
                match t {
                    PatchType::Merge | PatchType::Apply => super::patch::merge_patch(&mut v, patch),
                    PatchType::Strategic => super::patch::strategic_merge_patch(&mut v, patch)?,
                    PatchType::Json => super::patch::json_patch(&mut v, patch)?,
                }
                let want = patch.pointer("/metadata/resourceVersion").and_then(Value::as_str);
                if want.is_some_and(|w| Some(w) != old.pointer("/metadata/resourceVersion").and_then(Value::as_str)) {
                    return Err(ApiError::conflict(res, name));
                }
                v
            }
        };
        // Fields the server owns.
        for f in ["deletionTimestamp", "deletionGracePeriodSeconds", "generation"] {
            cand["metadata"][f] = old["metadata"][f].clone();
        }
        let new = match sub {
            Some("status") => {
                let mut n = old.clone();
                n["status"] = cand["status"].clone();
                n
            }
            Some("ephemeralcontainers") => {
                let mut n = old.clone();
                let mut list = cand["spec"]["ephemeralContainers"].clone();
                if let Some(items) = list.as_array_mut() {
                    for c in items.iter_mut() {
                        admission::default_container(c);
                    }
                }
                n["spec"]["ephemeralContainers"] = list;
                admission::validate_ephemeral_update(&old, &n)?;
                if let Some(nsobj) = &namespace {
                    admission::check_pod_security(&n, nsobj)?;
                }
                n
            }
            _ => {
                let mut n = cand;
                if has_status {
                    n["status"] = old["status"].clone();
                }
                if res.is("", "pods") {
                    admission::validate_pod_update(&old, &n)?;
                }
                if res.is("", "namespaces") {
                    n["metadata"]["labels"]["kubernetes.io/metadata.name"] = json!(name);
                }
                n
            }
        };
        if dry_run {
            result = Some(new);
            return Ok(());
        }
        *cur = new;
        Ok(())
    };
    let stored = sh.store.update(res, ns, name, apply)?;
    Ok(result.unwrap_or(stored))
}

fn delete_options(ctx: &Ctx, body: &Value) -> (Option<u64>, Option<String>, Option<String>) {
    let grace = body
        .get("gracePeriodSeconds")
        .and_then(Value::as_i64)
        .or_else(|| ctx.q("gracePeriodSeconds").and_then(|g| g.parse().ok()))
        .map(|g| g.max(0) as u64);
    let uid = body.pointer("/preconditions/uid").and_then(Value::as_str).map(String::from);
    let rv = body.pointer("/preconditions/resourceVersion").and_then(Value::as_str).map(String::from);
    (grace, uid, rv)
}

fn delete(
    sh: &Arc<Shared>,
    ctx: &Ctx,
    res: &'static ResourceDef,
    ns: &str,
    name: &str,
    body: &Value,
) -> Result<Response<Body>, ApiError> {
    let (grace, uid, rv) = delete_options(ctx, body);
    let obj = sh.store.get(res, ns, name)?;
    if let Some(u) = uid {
        let have = obj.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default();
        if u != have {
            return Err(ApiError::new(409, "Conflict", format!(
                "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: UID in precondition: {u}, UID in object meta: {have}",
                res.qualified()
            )));
        }
    }
    if let Some(r) = rv {
        let have = obj.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or_default();
        if r != have {
            return Err(ApiError::new(409, "Conflict", format!(
                "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: ResourceVersion in precondition: {r}, ResourceVersion in object meta: {have}",
                res.qualified()
            )));
        }
    }
    if ctx.dry_run() {
        return Ok(json_response(200, &obj));
    }
    if res.is("", "pods") {
        let out = delete_pod(sh, ns, name, grace)?;
        return Ok(json_response(200, &out));
    }
    if res.is("", "namespaces") {
        let out = delete_namespace(sh, name)?;
        return Ok(json_response(200, &out));
    }
    let gone = sh.store.delete(res, ns, name)?;
    let uid = gone.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default();
    Ok(json_response(200, &status::success(res, name, uid)))
}

/// Graceful pod deletion: a bound pod gets a deletionTimestamp and the kubelet
/// removes it once its containers have stopped; an unbound pod (or grace 0) goes at once.
pub(crate) fn delete_pod(sh: &Shared, ns: &str, name: &str, grace: Option<u64>) -> Result<Value, ApiError> {
    let pod = sh.store.get(pods_res(), ns, name)?;
    let grace = grace
        .unwrap_or_else(|| pod.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_u64).unwrap_or(30));
    let bound = pod.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty());
    if !bound || grace == 0 {
        return sh.store.delete(pods_res(), ns, name);
    }
    let already = pod.pointer("/metadata/deletionGracePeriodSeconds").and_then(Value::as_u64);
    if already.is_some_and(|g| g <= grace) {
        return Ok(pod);
    }
    let at = time::rfc3339(SystemTime::now() + Duration::from_secs(grace));
    sh.store.update(pods_res(), ns, name, |p| {
        p["metadata"]["deletionTimestamp"] = json!(at);
        p["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        Ok(())
    })
}

/// Namespace deletion: Terminating at once; contents are deleted, then the namespace.
fn delete_namespace(sh: &Arc<Shared>, name: &str) -> Result<Value, ApiError> {
    let ns = sh.store.update(namespace_res(), "", name, |n| {
        if n["metadata"]["deletionTimestamp"].is_null() {
            n["metadata"]["deletionTimestamp"] = json!(time::now());
        }
        n["status"]["phase"] = json!("Terminating");
        Ok(())
    })?;
    let sh = sh.clone();
    let name = name.to_string();
    tokio::spawn(async move {
        for res in resources::RESOURCES.iter().filter(|r| r.namespaced) {
            let (items, _) = sh.store.list(res, Some(&name), |_| true);
            for item in items {
                let r = if res.is("", "pods") {
                    delete_pod(&sh, &name, name_of(&item), None).map(drop)
                } else {
                    sh.store.delete(res, &name, name_of(&item)).map(drop)
                };
                if let Err(e) = r {
                    log::debug!("namespace {name}: deleting {}: {e}", name_of(&item));
                }
            }
        }
        let until = tokio::time::Instant::now() + NAMESPACE_DRAIN;
        while tokio::time::Instant::now() < until && !sh.store.list(pods_res(), Some(&name), |_| true).0.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = sh.store.delete(namespace_res(), "", &name);
    });
    Ok(ns)
}

fn delete_collection(
    sh: &Arc<Shared>,
    ctx: &Ctx,
    res: &'static ResourceDef,
    ns: Option<&str>,
    body: &Value,
) -> Result<Response<Body>, ApiError> {
    let (ls, fs) = selectors(ctx, res)?;
    let (grace, _, _) = delete_options(ctx, body);
    let (items, rv) = sh.store.list(res, ns, |o| ls.matches(o) && fs.matches(o));
    let mut out = Vec::new();
    for item in items {
        let item_ns = super::store::namespace_of(&item).to_string();
        let r = if res.is("", "pods") {
            delete_pod(sh, &item_ns, name_of(&item), grace)
        } else {
            sh.store.delete(res, &item_ns, name_of(&item))
        };
        if let Ok(v) = r {
            out.push(list_item(v));
        }
    }
    Ok(json_response(
        200,
        &json!({"kind": format!("{}List", res.kind), "apiVersion": res.api_version(), "metadata": {"resourceVersion": rv.to_string()}, "items": out}),
    ))
}

fn self_subject_access_review(sh: &Shared, user: &User, mut body: Value) -> Value {
    let allowed = match body.pointer("/spec/resourceAttributes") {
        Some(ra) if ra.is_object() => {
            let s = |k: &str| ra.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
            let a = Attributes {
                verb: s("verb"),
                group: s("group"),
                resource: s("resource"),
                subresource: s("subresource"),
                namespace: s("namespace"),
                name: s("name"),
            };
            sh.rbac().authorize(user, &a)
        }
        // Non-resource URLs (discovery, /version) are open to every authenticated user.
        _ => true,
    };
    body["apiVersion"] = json!("authorization.k8s.io/v1");
    body["kind"] = json!("SelfSubjectAccessReview");
    body["metadata"] = json!({"creationTimestamp": null});
    body["status"] = if allowed {
        json!({"allowed": true, "reason": format!("RBAC: allowed by the tlsspy test API server's rules for User \"{}\"", user.name)})
    } else {
        json!({"allowed": false})
    };
    body
}

/// The container an attach or log request means: `?container=`, the
/// default-container annotation, or the only/first container.
fn pick_container(pod: &Value, wanted: Option<&str>, for_logs: bool) -> Result<String, ApiError> {
    let name = name_of(pod);
    let names: Vec<String> = ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .flat_map(|f| pod["spec"][f].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect();
    if let Some(w) = wanted {
        if names.iter().any(|n| n == w) {
            return Ok(w.to_string());
        }
        return Err(ApiError::bad_request(format!("container {w} is not valid for pod {name}")));
    }
    if let Some(d) =
        pod.pointer("/metadata/annotations/kubectl.kubernetes.io~1default-container").and_then(Value::as_str)
    {
        return Ok(d.to_string());
    }
    let regular: Vec<String> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(String::from))
        .collect();
    if for_logs && regular.len() > 1 {
        return Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {name}, choose one of: [{}]",
            regular.join(" ")
        )));
    }
    regular.into_iter().next().ok_or_else(|| ApiError::bad_request(format!("pod {name} has no containers")))
}

fn not_running(pod: &Value, container: &str) -> ApiError {
    let name = name_of(pod);
    let status = ["containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"]
        .iter()
        .flat_map(|f| pod["status"][f].as_array().cloned().unwrap_or_default())
        .find(|c| c["name"] == container);
    let waiting = status.as_ref().and_then(|s| s.pointer("/state/waiting/reason")).and_then(Value::as_str);
    match waiting {
        Some(reason) => {
            ApiError::bad_request(format!("container \"{container}\" in pod \"{name}\" is waiting to start: {reason}"))
        }
        None if status.as_ref().is_some_and(|s| s.pointer("/state/terminated").is_some()) => {
            ApiError::bad_request(format!("container \"{container}\" in pod \"{name}\" is terminated"))
        }
        None => ApiError::bad_request(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: ContainerCreating"
        )),
    }
}

async fn attach_upgrade(
    sh: &Arc<Shared>,
    mut req: Request<Incoming>,
    ctx: &Ctx,
    ns: &str,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    let pod = sh.store.get(pods_res(), ns, name)?;
    let container = pick_container(&pod, ctx.q("container"), false)?;
    let upgrade = header_str(&req, header::UPGRADE).to_ascii_lowercase();
    if !upgrade.contains("websocket") {
        return Err(ApiError::bad_request(if upgrade.contains("spdy") {
            "SPDY is not supported by the tlsspy test API server: attach over WebSocket (v5.channel.k8s.io)".to_string()
        } else {
            "Upgrade request required".to_string()
        }));
    }
    let offered = header_str(&req, header::SEC_WEBSOCKET_PROTOCOL);
    let protocol = attach::negotiate(&offered)
        .ok_or_else(|| ApiError::bad_request(format!("none of the offered subprotocols are supported: {offered:?}")))?;
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes().to_vec())
        .ok_or_else(|| ApiError::bad_request("missing Sec-WebSocket-Key"))?;
    let run = sh
        .kubelet
        .pod(ns, name)
        .and_then(|p| p.container(&container))
        .filter(|c| c.is_running())
        .ok_or_else(|| not_running(&pod, &container))?;
    let streams =
        attach::Streams { stdin: ctx.q_true("stdin"), stdout: ctx.q_true("stdout"), stderr: ctx.q_true("stderr") };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => attach::session(upgraded, protocol, run, streams).await,
            Err(e) => log::debug!("attach upgrade failed: {e}"),
        }
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
    Ok(r)
}

fn logs(sh: &Shared, ctx: &Ctx, ns: &str, name: &str) -> Result<Response<Body>, ApiError> {
    let pod = sh.store.get(pods_res(), ns, name)?;
    let container = pick_container(&pod, ctx.q("container"), true)?;
    let run =
        sh.kubelet.pod(ns, name).and_then(|p| p.container(&container)).ok_or_else(|| not_running(&pod, &container))?;
    let (mut captured, mut more) = run.logs();
    if let Some(n) = ctx.q("tailLines").and_then(|n| n.parse::<usize>().ok()) {
        let text = String::from_utf8_lossy(&captured).into_owned();
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        captured = lines[lines.len().saturating_sub(n)..].concat().into_bytes();
    }
    if !ctx.q_true("follow") || !run.is_running() {
        return Ok(text(200, &String::from_utf8_lossy(&captured)));
    }
    let (tx, body) = channel_body();
    let mut exit = run.exit_watch();
    tokio::spawn(async move {
        if tx.send(Bytes::from(captured)).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                r = more.recv() => match r {
                    Ok(b) => if tx.send(b).await.is_err() { return },
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = async { exit.wait_for(Option::is_some).await.map(drop) } => {
                    while let Ok(b) = more.try_recv() {
                        let _ = tx.send(b).await;
                    }
                    return;
                }
            }
        }
    });
    let mut r = Response::new(body);
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(r)
}
