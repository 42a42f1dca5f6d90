//! A fake Kubernetes API server on 127.0.0.1 that speaks just enough HTTP/1.1 and JSON for this
//! crate (PV get, events create/patch, pods list, pod eviction) and records every request, so the
//! tests check what really went over the wire.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// One request the fake received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Option<Value>,
}

#[derive(Default)]
struct State {
    pvs: Mutex<HashMap<String, Value>>,
    pods: Mutex<Vec<Value>>,
    eviction_codes: Mutex<HashMap<String, u16>>,
    requests: Mutex<Vec<Recorded>>,
    /// (method, code, how many more times): injected failures, checked before routing.
    failures: Mutex<Vec<(String, u16, usize)>>,
    hold: Mutex<Option<(mpsc::UnboundedSender<String>, watch::Receiver<bool>)>>,
}

pub struct FakeApi {
    pub addr: SocketAddr,
    state: Arc<State>,
    server: JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Requests are parked on arrival until `release` is called.
pub struct Hold {
    /// Receives "METHOD path" for every parked request.
    pub entered: mpsc::UnboundedReceiver<String>,
    release: watch::Sender<bool>,
}

impl Hold {
    pub fn release(&self) {
        self.release.send_replace(true);
    }

    pub async fn next_entered(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(60), self.entered.recv())
            .await
            .expect("a request should reach the fake API server within 60 s")
            .expect("hold channel open")
    }
}

impl FakeApi {
    pub async fn start() -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local addr");
        let state = Arc::new(State::default());
        let st = state.clone();
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(st.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FakeApi {
            addr,
            state,
            server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A client as production builds it (kube's default retry on).
    pub fn client(&self) -> kube::Client {
        client_for(&self.url(), true)
    }

    /// A client without kube's automatic 429/503 retry.
    pub fn client_without_retry(&self) -> kube::Client {
        client_for(&self.url(), false)
    }

    pub fn add_pv(&self, name: &str, uid: &str, claim: Option<(&str, &str, &str)>) {
        let mut pv = json!({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name, "uid": uid},
            "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                     "csi": {"driver": "rds.csi.srvlab.io", "volumeHandle": name}}
        });
        if let Some((ns, claim_name, claim_uid)) = claim {
            pv["spec"]["claimRef"] = json!({
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "namespace": ns, "name": claim_name, "uid": claim_uid, "resourceVersion": "123"
            });
        }
        self.state.pvs.lock().unwrap().insert(name.to_owned(), pv);
    }

    /// A running pod in `ns` on `node` mounting the claims `claims`.
    pub fn add_pod(&self, ns: &str, name: &str, node: &str, claims: &[&str]) {
        let volumes: Vec<Value> = claims
            .iter()
            .enumerate()
            .map(|(i, c)| json!({"name": format!("v{i}"), "persistentVolumeClaim": {"claimName": c}}))
            .collect();
        self.state.pods.lock().unwrap().push(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}")},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}],
                     "volumes": volumes},
            "status": {"phase": "Running"}
        }));
    }

    /// Makes the eviction of `pod` answer `code` (default 201 Created).
    pub fn set_eviction_code(&self, pod: &str, code: u16) {
        self.state
            .eviction_codes
            .lock()
            .unwrap()
            .insert(pod.to_owned(), code);
    }

    /// Makes the next `times` requests with `method` fail with `code`.
    pub fn fail_next(&self, method: &str, code: u16, times: usize) {
        self.state
            .failures
            .lock()
            .unwrap()
            .push((method.to_owned(), code, times));
    }

    pub fn hold(&self) -> Hold {
        let (tx, entered) = mpsc::unbounded_channel();
        let (release, rx) = watch::channel(false);
        *self.state.hold.lock().unwrap() = Some((tx, rx));
        Hold { entered, release }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn requests_matching(&self, method: &str, path_prefix: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method && r.path.starts_with(path_prefix))
            .collect()
    }
}

pub fn client_for(url: &str, retry: bool) -> kube::Client {
    let mut config = kube::Config::new(url.parse().expect("url"));
    config.default_retry = retry;
    kube::Client::try_from(config).expect("kube client for the fake API server")
}

/// A port on 127.0.0.1 nobody listens on (bound, then closed).
pub async fn closed_port_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    format!("http://{addr}")
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    let status = if code < 300 { "Success" } else { "Failure" };
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": status,
               "reason": reason, "message": message, "code": code}),
    )
}

async fn handle(
    st: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Option<Value> = serde_json::from_slice(&body).ok();
    st.requests.lock().unwrap().push(Recorded {
        method: method.clone(),
        path: path.clone(),
        query: query.clone(),
        body: body.clone(),
    });

    let hold = st.hold.lock().unwrap().clone();
    if let Some((entered, mut release)) = hold {
        let _ = entered.send(format!("{method} {path}"));
        let _ = release.wait_for(|released| *released).await;
    }

    let injected = {
        let mut failures = st.failures.lock().unwrap();
        failures
            .iter_mut()
            .find(|(m, _, left)| *m == method && *left > 0)
            .map(|(_, code, left)| {
                *left -= 1;
                *code
            })
    };
    if let Some(code) = injected {
        let (code, value) = status(code, "InternalError", "injected failure");
        return Ok(json_response(code, &value));
    }

    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (code, value) = match (method.as_str(), segs.as_slice()) {
        ("GET", ["api", "v1", "persistentvolumes", name]) => {
            match st.pvs.lock().unwrap().get(*name) {
                Some(pv) => (200, pv.clone()),
                None => status(
                    404,
                    "NotFound",
                    &format!("persistentvolumes \"{name}\" not found"),
                ),
            }
        }
        ("POST", ["apis", "events.k8s.io", "v1", "namespaces", ns, "events"]) => {
            let mut ev = body.unwrap_or(Value::Null);
            ev["metadata"]["namespace"] = json!(ns);
            ev["apiVersion"] = json!("events.k8s.io/v1");
            ev["kind"] = json!("Event");
            (201, ev)
        }
        ("PATCH", ["apis", "events.k8s.io", "v1", "namespaces", ns, "events", _name]) => {
            let mut ev = body.unwrap_or(Value::Null);
            ev["metadata"]["namespace"] = json!(ns);
            (200, ev)
        }
        ("GET", ["api", "v1", "namespaces", ns, "pods"]) => {
            let node = query_param(&query, "fieldSelector")
                .and_then(|f| f.strip_prefix("spec.nodeName=").map(str::to_owned));
            let items: Vec<Value> = st
                .pods
                .lock()
                .unwrap()
                .iter()
                .filter(|p| p["metadata"]["namespace"] == json!(ns))
                .filter(|p| {
                    node.as_ref()
                        .is_none_or(|n| p["spec"]["nodeName"] == json!(n))
                })
                .cloned()
                .collect();
            (
                200,
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}),
            )
        }
        ("POST", ["api", "v1", "namespaces", _ns, "pods", pod, "eviction"]) => {
            let code = st
                .eviction_codes
                .lock()
                .unwrap()
                .get(*pod)
                .copied()
                .unwrap_or(201);
            match code {
                429 => status(
                    429,
                    "TooManyRequests",
                    "Cannot evict pod as it would violate the pod's disruption budget.",
                ),
                404 => status(404, "NotFound", &format!("pods \"{pod}\" not found")),
                c => status(c, "", ""),
            }
        }
        _ => status(404, "NotFound", "the fake API server does not serve this"),
    };
    Ok(json_response(code, &value))
}

fn json_response(code: u16, value: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())))
        .expect("response")
}
