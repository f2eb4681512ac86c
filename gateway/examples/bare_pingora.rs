//! The floor of the benchmark: a Pingora proxy that does nothing but forward to one upstream (no
//! routing, checks, headers, logs or metrics). `loadtest/bench.sh` runs it beside the gateway so that
//! the gateway's own cost per request can be told apart from Pingora's. It skips Pingora's default
//! compression module, as the gateway does.
//!
//! Usage: `bare_pingora LISTEN UPSTREAM` (one worker thread).

use async_trait::async_trait;
use pingora::modules::http::HttpModules;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;

// The same allocator as the gateway binary, so that the difference is the gateway's own work.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}
    /// No downstream modules: Pingora's default adds a (disabled) compression module, built per
    /// request, which the floor of the comparison should not carry.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}
    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: bare_pingora LISTEN UPSTREAM");
        std::process::exit(2);
    };
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        grace_period_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, Bare { upstream });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever()
}
