//! The docker target's load balancer: a reverse proxy whose backend set is swapped
//! atomically, with round-robin, in-flight counting per fleet (for draining) and retries of
//! requests that could not connect.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::target::FleetRef;

/// How many backends one request may try when connecting fails.
const ATTEMPTS: usize = 3;

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// A handle on a running proxy; clones share it. The serve future from [`Proxy::bind`]
/// does the work: dropping it stops the proxy.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    local_addr: SocketAddr,
    routes: RwLock<Arc<Routes>>,
    next: AtomicUsize,
    in_flight: Mutex<HashMap<String, Arc<AtomicUsize>>>,
    client: Client<HttpConnector, Full<Bytes>>,
}

/// One backend set: the fleet that serves and its instances' addresses.
struct Routes {
    fleet: Option<FleetRef>,
    backends: Vec<SocketAddr>,
    in_flight: Arc<AtomicUsize>,
}

impl Proxy {
    /// Binds `addr` (port 0 picks one) and returns the handle and the future that serves.
    pub async fn bind(
        addr: SocketAddr,
    ) -> std::io::Result<(Proxy, impl Future<Output = ()> + Send + 'static)> {
        let listener = TcpListener::bind(addr).await?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(5))
            .build(connector);
        let inner = Arc::new(Inner {
            local_addr: listener.local_addr()?,
            routes: RwLock::new(Arc::new(Routes {
                fleet: None,
                backends: Vec::new(),
                in_flight: Arc::default(),
            })),
            next: AtomicUsize::new(0),
            in_flight: Mutex::default(),
            client,
        });
        let proxy = Proxy {
            inner: inner.clone(),
        };
        Ok((proxy, serve(listener, inner)))
    }

    /// The address the proxy listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Sends every request from now on to `backends`, the instances of `fleet`. Requests
    /// already sent to the previous set finish there.
    pub fn route(&self, fleet: FleetRef, backends: Vec<SocketAddr>) {
        let in_flight = self.inner.counter(&fleet.id);
        let routes = Arc::new(Routes {
            fleet: Some(fleet),
            backends,
            in_flight,
        });
        *self.inner.routes.write().unwrap_or_else(|p| p.into_inner()) = routes;
    }

    /// The fleet requests go to now.
    pub fn live(&self) -> Option<FleetRef> {
        self.inner.current().fleet.clone()
    }

    /// Requests being served by `fleet` now.
    pub fn in_flight(&self, fleet: &str) -> usize {
        self.inner.counter(fleet).load(Ordering::SeqCst)
    }

    /// Waits until `fleet` serves no request, for at most `timeout`; returns how many
    /// were still in flight.
    pub async fn drain(&self, fleet: &str, timeout: Duration) -> usize {
        let counter = self.inner.counter(fleet);
        let deadline = tokio::time::Instant::now() + timeout;
        while counter.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let remaining = counter.load(Ordering::SeqCst);
        if remaining == 0 {
            self.inner.lock_in_flight().remove(fleet);
        }
        remaining
    }
}

impl Inner {
    fn current(&self) -> Arc<Routes> {
        self.routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn counter(&self, fleet: &str) -> Arc<AtomicUsize> {
        self.lock_in_flight()
            .entry(fleet.to_owned())
            .or_default()
            .clone()
    }

    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<AtomicUsize>>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next backend round-robin, skipping `tried`, counted in flight. The count is
    /// taken under the read lock, so once `route` returns no request can join the old set.
    fn pick(&self, tried: &[SocketAddr]) -> Option<(SocketAddr, InFlight)> {
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        let untried: Vec<SocketAddr> = routes
            .backends
            .iter()
            .filter(|backend| !tried.contains(backend))
            .copied()
            .collect();
        if untried.is_empty() {
            return None;
        }
        let backend = untried[self.next.fetch_add(1, Ordering::Relaxed) % untried.len()];
        routes.in_flight.fetch_add(1, Ordering::SeqCst);
        Some((backend, InFlight(routes.in_flight.clone())))
    }
}

/// Counts one request in flight until dropped (with the response body).
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve(listener: TcpListener, inner: Arc<Inner>) {
    // Connections live in the set so that dropping the serve future closes them too.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let inner = inner.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let inner = inner.clone();
                        async move { Ok::<_, Infallible>(forward(&inner, request).await) }
                    });
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    if let Err(error) = connection.await {
                        tracing::debug!(%error, "proxy connection ended");
                    }
                });
            }
            Some(_) = connections.join_next() => {}
        }
    }
}

/// Forwards one request; a backend that refuses the connection (nothing was sent) is
/// skipped for another of the current set.
async fn forward(inner: &Inner, request: Request<Incoming>) -> Response<ProxyBody> {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => return plain(StatusCode::BAD_REQUEST, format!("reading body: {error}")),
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |path| path.as_str())
        .to_owned();
    let mut tried = Vec::new();
    while tried.len() < ATTEMPTS {
        let Some((backend, in_flight)) = inner.pick(&tried) else {
            break;
        };
        let mut outgoing = Request::new(Full::new(body.clone()));
        *outgoing.method_mut() = parts.method.clone();
        *outgoing.headers_mut() = parts.headers.clone();
        *outgoing.uri_mut() = match format!("http://{backend}{path}").parse() {
            Ok(uri) => uri,
            Err(error) => return plain(StatusCode::BAD_REQUEST, format!("bad path: {error}")),
        };
        match inner.client.request(outgoing).await {
            Ok(response) => {
                return response.map(|body| {
                    body.map_frame(move |frame| {
                        let _counted = &in_flight;
                        frame
                    })
                    .boxed()
                });
            }
            Err(error) if error.is_connect() => {
                tracing::debug!(%backend, %error, "backend refused; trying another");
                tried.push(backend);
            }
            Err(error) => {
                return plain(
                    StatusCode::BAD_GATEWAY,
                    format!("backend {backend}: {error}"),
                );
            }
        }
    }
    plain(
        StatusCode::SERVICE_UNAVAILABLE,
        "no backend available".to_owned(),
    )
}

fn plain(status: StatusCode, message: String) -> Response<ProxyBody> {
    let body = Full::new(Bytes::from(message))
        .map_err(|never| match never {})
        .boxed();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// A backend on loopback answering `name` after `delay`.
    async fn backend(name: &'static str, delay: Duration) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_| async move {
                        tokio::time::sleep(delay).await;
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(name))))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    fn fleet(id: &str) -> FleetRef {
        FleetRef {
            id: id.to_owned(),
            release: id.to_owned(),
            image: id.to_owned(),
        }
    }

    async fn get(proxy: &Proxy) -> (StatusCode, String) {
        let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
        let uri = format!("http://{}/", proxy.local_addr()).parse().unwrap();
        let response = client.get(uri).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn without_backends_it_answers_503() {
        let (proxy, serve) = Proxy::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        tokio::spawn(serve);
        assert_eq!(get(&proxy).await.0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(proxy.live(), None);
    }

    #[tokio::test]
    async fn a_refused_connection_is_retried_on_another_backend() {
        let (proxy, serve) = Proxy::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        tokio::spawn(serve);
        let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_addr = dead.local_addr().unwrap();
        drop(dead);
        let alive = backend("b", Duration::ZERO).await;
        proxy.route(fleet("b"), vec![dead_addr, alive]);
        for _ in 0..6 {
            assert_eq!(get(&proxy).await, (StatusCode::OK, "b".to_owned()));
        }
        assert_eq!(proxy.live(), Some(fleet("b")));
    }

    #[tokio::test]
    async fn a_swap_lets_requests_in_flight_finish_and_drain_waits_for_them() {
        let (proxy, serve) = Proxy::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        tokio::spawn(serve);
        proxy.route(
            fleet("a"),
            vec![backend("a", Duration::from_millis(300)).await],
        );
        let slow = tokio::spawn({
            let proxy = proxy.clone();
            async move { get(&proxy).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(proxy.in_flight("a"), 1);
        proxy.route(fleet("b"), vec![backend("b", Duration::ZERO).await]);
        assert_eq!(get(&proxy).await.1, "b");
        let started = Instant::now();
        assert_eq!(proxy.drain("a", Duration::from_secs(5)).await, 0);
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(slow.await.unwrap(), (StatusCode::OK, "a".to_owned()));
    }
}
