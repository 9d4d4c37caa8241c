//! The resolver with its upstreams: drives [`Resolver`] steps to an answer.
//!
//! The TCP, DoT and DoH listeners call [`DnsService::answer`] for each query; the UDP listener
//! threads hand over the [`Step`]s they do not finish themselves (`dns::udp_batch`) to
//! [`DnsService::finish`]. This is the one place that awaits an upstream for the resolver: the
//! decisions stay in `dns::engine`.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use super::engine::{Resolver, Step, Transport};
use super::tokens::{Asker, DnsTokens};
use super::upstream::Upstreams;

/// The resolver core and the upstream pool it asks.
pub struct DnsService {
    resolver: Arc<Resolver>,
    upstreams: Arc<Upstreams>,
    /// The devices' DNS tokens, for the TLS listeners.
    tokens: Arc<DnsTokens>,
}

impl DnsService {
    /// The service over `resolver` asking `upstreams`.
    pub fn new(resolver: Arc<Resolver>, upstreams: Arc<Upstreams>) -> Arc<DnsService> {
        DnsService::with_tokens(resolver, upstreams, Arc::new(DnsTokens::default()))
    }

    /// The service with the devices' DNS `tokens` (the daemon publishes them).
    pub fn with_tokens(
        resolver: Arc<Resolver>,
        upstreams: Arc<Upstreams>,
        tokens: Arc<DnsTokens>,
    ) -> Arc<DnsService> {
        Arc::new(DnsService {
            resolver,
            upstreams,
            tokens,
        })
    }

    /// The devices' DNS tokens in force.
    pub fn tokens(&self) -> &DnsTokens {
        &self.tokens
    }

    /// The resolver core.
    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    /// The upstream pool.
    pub fn upstreams(&self) -> &Upstreams {
        &self.upstreams
    }

    /// Answers one query; `None` = send nothing.
    pub async fn answer(
        &self,
        query: &[u8],
        client: IpAddr,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(512);
        let step = self
            .resolver
            .handle_query(query, client, transport, Instant::now(), &mut out);
        self.finish(step, out).await
    }

    /// Answers one query for the asker a TLS listener judged (see [`DnsTokens`]).
    pub async fn answer_as(
        &self,
        query: &[u8],
        asker: Asker,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(512);
        let step = self
            .resolver
            .handle_query_as(query, asker, transport, Instant::now(), &mut out);
        self.finish(step, out).await
    }

    /// Takes `step` to its end, asking the upstreams (with fail-over) as often as the resolver
    /// asks; `out` is the buffer the step wrote into. `None` = send nothing.
    pub async fn finish(&self, step: Step, out: Vec<u8>) -> Option<Vec<u8>> {
        self.finish_skipping(step, out, None).await
    }

    /// Like [`finish`](Self::finish), but the first question is not asked of the `udp://`
    /// upstream at `skip` (the UDP listener already asked it, and it failed or timed out).
    pub async fn finish_skipping(
        &self,
        mut step: Step,
        mut out: Vec<u8>,
        mut skip: Option<std::net::SocketAddr>,
    ) -> Option<Vec<u8>> {
        loop {
            match step {
                Step::Answered => return Some(out),
                Step::Drop => return None,
                Step::Ask(pending) => {
                    let (name, qtype) = pending.ask();
                    let answer = self
                        .upstreams
                        .query_skipping(name.clone(), qtype, skip.take())
                        .await;
                    step = self
                        .resolver
                        .handle_upstream(pending, answer, Instant::now(), &mut out);
                }
            }
        }
    }
}
