//! Routing: a `matchit` radix tree from path patterns (`/kv/{key}`, `/static/{*rest}`) to routes,
//! and per-route dispatch by method with 404, and 405 with an `Allow` header.
//!
//! `OPTIONS` on a path that has no handler of its own for it answers with the route's `Allow`
//! (RFC 9110 §9.3.7), which lists OPTIONS too. Requests that are not about a path get their
//! RFC 9110 answers here too: `OPTIONS *` (about the server as a whole) lists every method the
//! router serves; CONNECT (a tunnel, which this server
//! does not make) and a method no route serves and RFC 9110 does not define (`FOO`, or `get`:
//! methods are case-sensitive) are 501, not 405, which would claim the method is known.
//!
//! A router is built once per shard (handlers hold shard-local state) and is immutable while it
//! serves; a config reload builds a new one. `HEAD` is served by the `GET` handler with the body
//! dropped by the connection. Lookups allocate nothing (matchit keeps up to three parameters
//! inline).

use std::rc::Rc;

use crate::handler::{Handler, Middleware};

/// One path pattern's handlers.
pub struct Route {
    pattern: String,
    methods: Vec<(String, Rc<dyn Handler>)>,
    middleware: Vec<Rc<dyn Middleware>>,
    allow: Vec<u8>,
}

impl Route {
    fn handler(&self, method: &str) -> Option<&Rc<dyn Handler>> {
        let found = self
            .methods
            .iter()
            .find(|(m, _)| m == method)
            .map(|(_, h)| h);
        match found {
            None if method == "HEAD" => self
                .methods
                .iter()
                .find(|(m, _)| m == "GET")
                .map(|(_, h)| h),
            other => other,
        }
    }
    /// The route's middleware, outermost first.
    pub fn middleware(&self) -> &[Rc<dyn Middleware>] {
        &self.middleware
    }
}

/// What a lookup found.
pub enum Found<'a, 'p> {
    /// A handler, the route's middleware, the path parameters and the route's index (see
    /// [`Router::patterns`]).
    Handler(
        &'a Rc<dyn Handler>,
        &'a [Rc<dyn Middleware>],
        matchit::Params<'a, 'p>,
        usize,
    ),
    /// The path exists but not for this method; the value of `Allow`.
    MethodNotAllowed(&'a [u8]),
    /// No route matches the path.
    NotFound,
    /// `OPTIONS` that no handler serves: the value of `Allow` for the path, or for the server as a
    /// whole (`OPTIONS *`). The answer is `200` with no content.
    Options(&'a [u8]),
    /// CONNECT, or a method the server does not recognise: 501.
    NotImplemented,
}

/// Methods RFC 9110 (and RFC 5789, PATCH) define: a route that lacks one of these answers 405.
const STANDARD_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE", "PATCH", "CONNECT",
];

/// Errors building a router.
#[derive(Debug)]
pub struct RouteError(pub String);

impl std::fmt::Display for RouteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for RouteError {}

/// Builds a [`Router`].
#[derive(Default)]
pub struct RouterBuilder {
    routes: Vec<(String, Route)>,
    global: Vec<Rc<dyn Middleware>>,
}

impl RouterBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `handler` for `method` on `path` (matchit syntax: `{param}`, `{*catch_all}`).
    pub fn route(mut self, method: &str, path: &str, handler: Rc<dyn Handler>) -> Self {
        self.add(method, path, handler);
        self
    }

    /// Adds a route in place.
    pub fn add(&mut self, method: &str, path: &str, handler: Rc<dyn Handler>) {
        let route = match self.routes.iter_mut().find(|(p, _)| p == path) {
            Some((_, r)) => r,
            None => {
                self.routes.push((
                    path.to_string(),
                    Route {
                        pattern: path.to_string(),
                        methods: Vec::new(),
                        middleware: Vec::new(),
                        allow: Vec::new(),
                    },
                ));
                &mut self.routes.last_mut().expect("just pushed").1
            }
        };
        route.methods.retain(|(m, _)| m != method);
        route.methods.push((method.to_string(), handler));
    }

    /// Adds middleware to one path's route (after the global middleware).
    pub fn layer_on(mut self, path: &str, mw: Rc<dyn Middleware>) -> Self {
        if let Some((_, r)) = self.routes.iter_mut().find(|(p, _)| p == path) {
            r.middleware.push(mw);
        }
        self
    }

    /// Adds middleware to every route.
    pub fn layer(mut self, mw: Rc<dyn Middleware>) -> Self {
        self.global.push(mw);
        self
    }

    /// Builds the tree; fails on conflicting patterns.
    pub fn build(self) -> Result<Router, RouteError> {
        let mut tree = matchit::Router::new();
        let mut routes = Vec::with_capacity(self.routes.len());
        // Every method some route serves, in first-seen order, HEAD with GET, OPTIONS last.
        let mut served: Vec<String> = Vec::new();
        for (i, (path, mut route)) in self.routes.into_iter().enumerate() {
            tree.insert(path.as_str(), i)
                .map_err(|e| RouteError(format!("route {path:?}: {e}")))?;
            let mut names: Vec<&str> = route.methods.iter().map(|(m, _)| m.as_str()).collect();
            if names.contains(&"GET") && !names.contains(&"HEAD") {
                names.push("HEAD");
            }
            if !names.contains(&"OPTIONS") {
                names.push("OPTIONS");
            }
            route.allow = names.join(", ").into_bytes();
            for n in names {
                if n != "OPTIONS" && !served.iter().any(|m| m == n) {
                    served.push(n.to_string());
                }
            }
            let mut mw = self.global.clone();
            mw.append(&mut route.middleware);
            route.middleware = mw;
            routes.push(route);
        }
        let extra_methods = served
            .iter()
            .filter(|m| !STANDARD_METHODS.contains(&m.as_str()))
            .cloned()
            .collect();
        served.push("OPTIONS".to_string());
        Ok(Router {
            tree,
            routes,
            allow_any: served.join(", ").into_bytes(),
            extra_methods,
        })
    }
}

/// A shard's routing table.
pub struct Router {
    tree: matchit::Router<usize>,
    routes: Vec<Route>,
    /// `Allow` for `OPTIONS *`: every method some route serves, and OPTIONS.
    allow_any: Vec<u8>,
    /// Methods routes serve beyond [`STANDARD_METHODS`] (extension methods such as `PURGE`).
    extra_methods: Vec<String>,
}

impl Router {
    /// The path patterns, by route index.
    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        self.routes.iter().map(|r| r.pattern.as_str())
    }

    /// Finds what serves `method path`.
    ///
    /// `path` is the request target's path; one that does not start with `/` is the target of
    /// `OPTIONS *` or of CONNECT (the parser admits asterisk-form and authority-form with those
    /// methods only).
    pub fn find<'a, 'p>(&'a self, method: &str, path: &'p str) -> Found<'a, 'p> {
        if !path.starts_with('/') {
            return if path == "*" {
                Found::Options(&self.allow_any)
            } else {
                Found::NotImplemented
            };
        }
        // A method a route serves is recognised: the check is only for requests that no route
        // serves, off the path of the ones that succeed.
        match self.tree.at(path) {
            Ok(m) => {
                let route = &self.routes[*m.value];
                match route.handler(method) {
                    Some(h) => Found::Handler(h, &route.middleware, m.params, *m.value),
                    None if method == "OPTIONS" => Found::Options(&route.allow),
                    None if !self.recognises(method) => Found::NotImplemented,
                    None => Found::MethodNotAllowed(&route.allow),
                }
            }
            Err(_) if !self.recognises(method) => Found::NotImplemented,
            Err(_) => Found::NotFound,
        }
    }

    /// Whether `method` is one RFC 9110 defines or one some route serves.
    fn recognises(&self, method: &str) -> bool {
        STANDARD_METHODS.contains(&method) || self.extra_methods.iter().any(|m| m == method)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handler::{Response, handler_fn};

    fn ok() -> Rc<dyn Handler> {
        handler_fn(|_r| Response::text(b"ok"))
    }

    #[test]
    fn dispatches_by_path_and_method() {
        let r = RouterBuilder::new()
            .route("GET", "/kv/{key}", ok())
            .route("PUT", "/kv/{key}", ok())
            .route("GET", "/files/{*rest}", ok())
            .build()
            .unwrap();
        match r.find("GET", "/kv/abc") {
            Found::Handler(_, _, p, _) => assert_eq!(p.get("key"), Some("abc")),
            _ => panic!("expected a handler"),
        }
        match r.find("GET", "/files/a/b/c") {
            Found::Handler(_, _, p, _) => assert_eq!(p.get("rest"), Some("a/b/c")),
            _ => panic!("expected a handler"),
        }
        assert!(
            matches!(r.find("HEAD", "/kv/x"), Found::Handler(..)),
            "HEAD falls back to GET"
        );
        match r.find("POST", "/kv/x") {
            Found::MethodNotAllowed(allow) => assert_eq!(allow, b"GET, PUT, HEAD, OPTIONS"),
            _ => panic!("expected 405"),
        }
        // OPTIONS on a path answers with what the path allows (RFC 9110 §9.3.7) ...
        match r.find("OPTIONS", "/kv/x") {
            Found::Options(allow) => assert_eq!(allow, b"GET, PUT, HEAD, OPTIONS"),
            _ => panic!("expected the path's Allow"),
        }
        // ... unless a handler of the route serves it.
        let own = RouterBuilder::new()
            .route("GET", "/a", ok())
            .route("OPTIONS", "/a", ok())
            .build()
            .unwrap();
        assert!(matches!(own.find("OPTIONS", "/a"), Found::Handler(..)));
        assert!(matches!(
            own.find("PUT", "/a"),
            Found::MethodNotAllowed(b"GET, OPTIONS, HEAD")
        ));
        assert!(matches!(r.find("GET", "/nope"), Found::NotFound));
        assert!(matches!(r.find("OPTIONS", "/nope"), Found::NotFound));
    }

    #[test]
    fn conflicting_patterns_are_an_error() {
        let r = RouterBuilder::new()
            .route("GET", "/a/{x}", ok())
            .route("GET", "/a/{y}", ok())
            .build();
        assert!(r.is_err());
    }

    #[test]
    fn extension_methods_are_recognised_once_a_route_serves_them() {
        let r = RouterBuilder::new()
            .route("GET", "/a", ok())
            .route("PURGE", "/cache", ok())
            .build()
            .unwrap();
        // A route's extension method is known everywhere: elsewhere it is 405, not 501.
        assert!(matches!(
            r.find("PURGE", "/a"),
            Found::MethodNotAllowed(b"GET, HEAD, OPTIONS")
        ));
        assert!(matches!(r.find("PURGE", "/cache"), Found::Handler(..)));
        assert!(matches!(r.find("BREW", "/a"), Found::NotImplemented));
        assert!(matches!(r.find("TRACE", "/a"), Found::MethodNotAllowed(_)));
        match r.find("OPTIONS", "*") {
            Found::Options(allow) => assert_eq!(allow, b"GET, HEAD, PURGE, OPTIONS"),
            _ => panic!("expected the server's Allow"),
        }
        assert!(matches!(
            r.find("CONNECT", "example.com:443"),
            Found::NotImplemented
        ));
    }
}
