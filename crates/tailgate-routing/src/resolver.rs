//! Where the gateways are: `static` hostnames, `dns` (re-resolved every `interval`, and at
//! once when a send fails), or `k8s` (a Service's ready EndpointSlice addresses, watched).
//! Every resolver publishes a sorted list of endpoint strings on a `watch` channel, spelled as
//! the collector's resolvers spell them (the ring hashes the strings): `ip:port` from `dns` and
//! `k8s`, the hostnames as configured from `static` (the OTLP port is added when connecting).

use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, gauge};
use tailgate_config::agent::ResolverConfig;
use tailgate_k8s::endpoints::ServiceEndpoints;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::telemetry::*;

/// A running resolver.
pub struct Resolver {
    pub endpoints: watch::Receiver<Vec<String>>,
    /// Wakes the DNS resolver early (a send failed: the gateway set may have changed).
    refresh: Arc<Notify>,
    task: Option<JoinHandle<()>>,
    /// Keeps a static list's channel open.
    _static: Option<watch::Sender<Vec<String>>>,
    /// Keeps the EndpointSlice watch alive.
    _k8s: Option<ServiceEndpoints>,
}

impl Drop for Resolver {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// `host` → `host:4317`; `host:port` and `[v6]:port` stay.
pub fn with_default_port(host: &str, port: u16) -> String {
    let h = host
        .trim()
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let has_port = match h.rfind(':') {
        Some(i) => !h.starts_with('[') || h[..i].ends_with(']'),
        None => false,
    };
    if has_port {
        h.to_string()
    } else {
        format!("{h}:{port}")
    }
}

impl Resolver {
    pub async fn start(cfg: &ResolverConfig) -> anyhow::Result<Resolver> {
        let refresh = Arc::new(Notify::new());
        if let Some(s) = &cfg.static_ {
            // Hostnames as written: the collector's ring hashes these strings, and a fleet of
            // both kinds of agent must place traces alike. The port default is added when
            // connecting (`with_default_port`), as the collector does.
            let mut eps: Vec<String> = s.hostnames.iter().map(|h| h.trim().to_string()).collect();
            eps.sort();
            eps.dedup();
            gauge!(ROUTING_ENDPOINTS).set(eps.len() as f64);
            let (tx, rx) = watch::channel(eps);
            return Ok(Resolver {
                endpoints: rx,
                refresh,
                task: None,
                _static: Some(tx),
                _k8s: None,
            });
        }
        if let Some(d) = &cfg.dns {
            let (tx, rx) = watch::channel(Vec::new());
            let host = d.hostname.clone();
            let port = d.port;
            let interval = d.interval.0;
            let timeout = d.timeout.0;
            let wake = Arc::clone(&refresh);
            let task = tokio::spawn(async move {
                loop {
                    match tokio::time::timeout(
                        timeout,
                        tokio::net::lookup_host((host.as_str(), port)),
                    )
                    .await
                    {
                        Ok(Ok(addrs)) => {
                            let mut eps: Vec<String> = addrs.map(|a| a.to_string()).collect();
                            eps.sort();
                            eps.dedup();
                            gauge!(ROUTING_ENDPOINTS).set(eps.len() as f64);
                            tx.send_if_modified(|cur| {
                                let changed = *cur != eps;
                                *cur = eps;
                                changed
                            });
                        }
                        Ok(Err(e)) => {
                            counter!(ROUTING_RESOLVE_FAILURES, "resolver" => "dns").increment(1);
                            tracing::warn!(host = %host, error = %e, "DNS resolution failed; keeping the last endpoints");
                        }
                        Err(_) => {
                            counter!(ROUTING_RESOLVE_FAILURES, "resolver" => "dns").increment(1);
                            tracing::warn!(host = %host, "DNS resolution timed out; keeping the last endpoints");
                        }
                    }
                    tokio::select! {
                        () = tokio::time::sleep(interval) => {}
                        () = wake.notified() => {
                            // At most one early refresh per second.
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            });
            return Ok(Resolver {
                endpoints: rx,
                refresh,
                task: Some(task),
                _static: None,
                _k8s: None,
            });
        }
        let k = cfg
            .k8s
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("resolver: set one of static, dns, k8s"))?;
        let client = tailgate_k8s::client::inferred()
            .await
            .map_err(|e| anyhow::anyhow!("resolver.k8s: {e}"))?;
        let watch = ServiceEndpoints::start(client, &k.service, &k.ports, k.return_hostnames);
        let mut source = watch.endpoints.clone();
        let (tx, rx) = watch::channel(Vec::new());
        let task = tokio::spawn(async move {
            loop {
                let eps = source.borrow_and_update().clone();
                gauge!(ROUTING_ENDPOINTS).set(eps.len() as f64);
                let _ = tx.send(eps);
                if source.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Resolver {
            endpoints: rx,
            refresh,
            task: Some(task),
            _static: None,
            _k8s: Some(watch),
        })
    }

    /// Asks for a fresh resolution soon (DNS only; the others are pushed).
    pub fn refresh(&self) {
        self.refresh.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::with_default_port;

    #[test]
    fn hostnames_get_the_otlp_port_unless_they_have_one() {
        assert_eq!(with_default_port("gw-0.gw", 4317), "gw-0.gw:4317");
        assert_eq!(with_default_port("gw-0.gw:5317", 4317), "gw-0.gw:5317");
        assert_eq!(
            with_default_port("http://10.0.0.1:4317", 4317),
            "10.0.0.1:4317"
        );
        assert_eq!(with_default_port("[::1]:4317", 4317), "[::1]:4317");
        assert_eq!(with_default_port("[::1]", 4317), "[::1]:4317");
    }
}

#[cfg(test)]
mod dns_tests {
    use super::*;
    use tailgate_config::GoDuration;
    use tailgate_config::agent::DnsResolverConfig;

    #[tokio::test]
    async fn the_dns_resolver_publishes_every_address_of_the_name_with_the_port() {
        let cfg = ResolverConfig {
            static_: None,
            dns: Some(DnsResolverConfig {
                hostname: "localhost".into(),
                port: 4317,
                interval: GoDuration::from_secs(5),
                timeout: GoDuration::from_secs(1),
            }),
            k8s: None,
        };
        let r = Resolver::start(&cfg).await.unwrap();
        let mut rx = r.endpoints.clone();
        let eps = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|e| !e.is_empty()))
            .await
            .expect("resolved")
            .unwrap()
            .clone();
        assert!(eps.contains(&"127.0.0.1:4317".to_string()), "{eps:?}");
    }
}
