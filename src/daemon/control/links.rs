//! Links to other Cloud PCs: the parts of [`Control`] that make and accept a link code, answer
//! the other hub's calls, keep each link's tunnel and kernel rules in force, and tell the other
//! side what this one exports (see `crate::link` for how a link carries packets).
//!
//! Pairing, with A the side that made the code and B the side that accepts it:
//! 1. B makes its dial key and calls A's `/link/join` with the code and its facts.
//! 2. A takes the code (once), registers B's dial key as the device `link-NAME` of a `link`
//!    person, makes its own dial key, keeps the link (pending) and answers with its facts, the
//!    address B's key has on A, and a fresh secret.
//! 3. B registers A's dial key likewise, keeps the link, brings its side up and calls A's
//!    `/link/confirm` with the address A's key has on B (and what B exports); A brings its
//!    side up. Later calls (`/link/exports`, `/link/remove`) carry the secret.

use super::{bad, sha256, Control};
use crate::api::{ApiError, HubFacts, LinkCall, LinkCode, LinkJoin, LinkJoined, LinkView};
use crate::connect::invite::{parse_hub_link, post_json, InviteLink};
use crate::enroll::keys::KeyPair;
use crate::link::{self, tunnel, LinkNet};
use crate::store::{Export, Link, Person, Role, ShareWith, Store};

/// A link code is good for a day.
const CODE_LIFETIME_S: i64 = 86_400;

/// The device a link's dial key is registered as.
fn link_device(name: &str) -> String {
    format!("link-{}", name.to_ascii_lowercase())
}

fn this_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| {
            let h = h.trim().to_ascii_lowercase();
            h.split('.').next().unwrap_or("").to_string()
        })
        .unwrap_or_default()
}

fn refused(why: impl Into<String>) -> ApiError {
    ApiError::Forbidden(why.into())
}

/// Refuses facts of another hub that could not be used (or would point this hub elsewhere).
fn check_facts(f: &HubFacts) -> Result<(), ApiError> {
    key_bytes(&f.hub_key)?;
    key_bytes(&f.dial_key)?;
    parse_hub_link(&format!("{}/link#code=x", f.https), "link")
        .map_err(|_| bad("the other hub's HTTPS address does not read"))?;
    crate::enroll::wgconfig::endpoint_with_port(&f.endpoint, 51820)
        .map_err(|_| bad("the other hub's endpoint does not read"))?;
    if f.overlay.prefix_len() < 10 {
        return Err(bad("the other hub's overlay is too large to be linked"));
    }
    Ok(())
}

fn key_bytes(b64: &str) -> Result<[u8; 32], ApiError> {
    crate::enroll::keys::decode_key(b64, "key").map_err(|e| bad(e.to_string()))
}

impl Control {
    /// What this hub tells the other one about itself.
    fn hub_facts(&self, dial_key: &str) -> Result<HubFacts, ApiError> {
        if self.invites.base.is_empty() {
            return Err(bad(
                "linking needs the hub's public name or address: set wireguard.endpoint (or tls.domain) in the config",
            ));
        }
        let endpoint = self.enroll.check().map_err(|e| bad(e.to_string()))?;
        let pin = self.cert_pin();
        Ok(HubFacts {
            hostname: this_hostname(),
            https: self.invites.base.clone(),
            pin,
            endpoint,
            hub_key: self.enroll.hub_public_key.clone(),
            overlay: self.overlay.v4,
            dial_key: dial_key.to_string(),
        })
    }

    /// Refuses a link name that is not a label or is taken (by a person, a link or the
    /// device it would register).
    fn check_link_name(&self, store: &Store, name: &str) -> Result<(), ApiError> {
        if !crate::dns::name::is_valid_label(name) {
            return Err(bad(format!(
                "{name:?} cannot name a link: use letters, digits and dashes (give one with --name)"
            )));
        }
        if store.person(name)?.is_some()
            || store
                .links()?
                .iter()
                .any(|l| l.name.eq_ignore_ascii_case(name))
        {
            return Err(ApiError::Conflict(format!(
                "{name:?} already names a person or a link here; pick another with --name"
            )));
        }
        if store.device(&link_device(name)).is_ok() {
            return Err(ApiError::Conflict(format!(
                "a device named {:?} already exists; pick another link name with --name",
                link_device(name)
            )));
        }
        Ok(())
    }

    /// Registers the other side's dial key as the device of a new `link` person.
    fn register_link_peer(
        &self,
        store: &mut Store,
        name: &str,
        dial_key: &str,
    ) -> Result<std::net::Ipv4Addr, ApiError> {
        key_bytes(dial_key)?;
        store.add_person(&Person {
            name: name.to_string(),
            role: Role::Link,
            internet: None,
            created_at: crate::store::unix_now(),
        })?;
        let patch = crate::store::DevicePatch {
            person: Some(Some(name.to_string())),
            ..Default::default()
        };
        match store.add_device_with(&link_device(name), dial_key, true, &self.overlay, &patch) {
            Ok(d) => Ok(d.ipv4),
            Err(e) => {
                let _ = store.remove_person(name);
                Err(e.into())
            }
        }
    }

    /// An import prefix for a peer overlay of `len` bits.
    fn pick_prefix(&self, store: &Store, len: u8) -> Result<ipnet::Ipv4Net, ApiError> {
        let mut taken = vec![self.overlay.v4];
        taken.extend(store.links()?.iter().map(|l| l.import_prefix));
        link::pick_import_prefix(len, &taken)
            .ok_or_else(|| ApiError::Conflict("no address range left for another link".into()))
    }

    pub(super) fn link_list(&self) -> Result<Vec<LinkView>, ApiError> {
        let links = self.store.lock().links()?;
        let running = self.engines.as_ref().map(|e| e.links.lock());
        Ok(links
            .iter()
            .map(|l| {
                let mut v = view(l);
                v.handshake_secs_ago = running
                    .as_ref()
                    .and_then(|r| r.get(&l.name))
                    .and_then(|t| t.since_handshake())
                    .map(|d| d.as_secs());
                v
            })
            .collect())
    }

    pub(super) fn link_create(&self, name: Option<&str>) -> Result<LinkCode, ApiError> {
        let Some(name) = name else {
            return Err(bad(
                "name the link (--name): its devices will be NAME.<zone> here",
            ));
        };
        self.hub_facts("")?;
        let code = super::people::new_code();
        let store = self.store.lock();
        self.check_link_name(&store, name)?;
        store.add_link_code(
            &sha256(&super::normalize_code(&code).unwrap_or_default()),
            name,
            crate::store::unix_now() + CODE_LIFETIME_S,
        )?;
        let mut text = format!("{}/link#code={code}", self.invites.base);
        if let Some(pin) = self.cert_pin() {
            text.push_str(&format!("&pin={pin}"));
        }
        Ok(LinkCode {
            name: name.to_string(),
            code: text,
        })
    }

    /// B's side: takes A's code, pairs with A, brings the link up.
    pub(super) fn link_accept(&self, code: &str, name: Option<&str>) -> Result<LinkView, ApiError> {
        let target = parse_hub_link(code, "link").map_err(|e| bad(e.to_string()))?;
        let dial = KeyPair::generate();
        let facts = self.hub_facts(&dial.public_b64())?;
        if let Some(n) = name {
            self.check_link_name(&self.store.lock(), n)?;
        }
        let join = crate::api::LinkJoin {
            code: target.code.clone(),
            facts,
        };
        let joined: LinkJoined = self.call_hub(&target, "/link/join", &join)?;
        let name = name
            .map(str::to_string)
            .unwrap_or_else(|| joined.facts.hostname.clone());
        check_facts(&joined.facts)?;
        if !joined.facts.overlay.contains(&joined.your_address) {
            return Err(ApiError::BadGateway(
                "the other hub gave an address outside its overlay".into(),
            ));
        }
        let mut store = self.store.lock();
        self.check_link_name(&store, &name)?;
        let import_prefix = self.pick_prefix(&store, joined.facts.overlay.prefix_len())?;
        let peer_address = self.register_link_peer(&mut store, &name, &joined.facts.dial_key)?;
        let l = Link {
            name: name.clone(),
            peer_https: joined.facts.https.clone(),
            peer_pin: joined.facts.pin.clone(),
            peer_endpoint: joined.facts.endpoint.clone(),
            peer_hub_key: joined.facts.hub_key.clone(),
            peer_overlay: joined.facts.overlay,
            dial_private: dial.private_b64(),
            dial_address: joined.your_address,
            import_prefix,
            secret: joined.secret.clone(),
            exports: vec![],
            created_at: crate::store::unix_now(),
        };
        if let Err(e) = store.put_link(&l) {
            let _ = store.remove_person(&name);
            return Err(e.into());
        }
        let confirm = LinkCall {
            secret: l.secret.clone(),
            your_address: Some(peer_address),
            exports: Some(exports_of(&store, &name)?),
        };
        let undo = |store: &Store| {
            let _ = store.remove_link(&name);
            let _ = store.remove_person(&name);
        };
        drop(store);
        if let Err(e) = self.call_peer::<_, serde_json::Value>(&l, "/link/confirm", &confirm) {
            {
                let store = self.store.lock();
                undo(&store);
                let _ = self.apply_devices(&store);
            }
            // The other side's pending half goes too (when it can be reached).
            let call = LinkCall {
                secret: l.secret.clone(),
                ..Default::default()
            };
            let _ = self.call_peer::<_, serde_json::Value>(&l, "/link/remove", &call);
            return Err(e);
        }
        let store = self.store.lock();
        self.apply_devices(&store)?;
        self.apply_links(&store)?;
        Ok(view(&l))
    }

    pub(super) fn link_remove(&self, name: &str) -> Result<(), ApiError> {
        let store = self.store.lock();
        let Some(l) = store
            .links()?
            .into_iter()
            .find(|l| l.name.eq_ignore_ascii_case(name))
        else {
            return Err(ApiError::NotFound(format!(
                "no link named {name:?}; `cloudpc link list` shows them"
            )));
        };
        self.drop_link(&store, &l)?;
        drop(store);
        // The other side cuts its half too (if it can be reached; ours is cut already).
        let call = LinkCall {
            secret: l.secret.clone(),
            ..Default::default()
        };
        if let Err(e) = self.call_peer::<_, serde_json::Value>(&l, "/link/remove", &call) {
            tracing::warn!(error = %e, "the linked hub was not told of the removal");
        }
        Ok(())
    }

    /// Removes a link and everything of it here, in force at once.
    fn drop_link(&self, store: &Store, l: &Link) -> Result<(), ApiError> {
        store.remove_link(&l.name)?;
        store.remove_person(&l.name)?;
        self.apply_devices(store)?;
        self.apply_links(store)
    }

    /// Puts the confirmed links' tunnels and kernel rules in force.
    pub(super) fn apply_links(&self, store: &Store) -> Result<(), ApiError> {
        let Some(e) = &self.engines else {
            return Ok(());
        };
        if e.hub.is_none() {
            return Ok(());
        }
        let links: Vec<Link> = store
            .links()?
            .into_iter()
            .filter(|l| !l.dial_address.is_unspecified())
            .collect();
        let mut running = e.links.lock();
        running.retain(|name, _| links.iter().any(|l| &l.name == name));
        for l in &links {
            if running.contains_key(&l.name) {
                continue;
            }
            // Bounded: this runs under the store lock (an endpoint is usually an address).
            let peer = self
                .rt
                .block_on(tokio::time::timeout(
                    std::time::Duration::from_secs(2),
                    tokio::net::lookup_host(l.peer_endpoint.clone()),
                ))
                .ok()
                .and_then(|r| r.ok())
                .and_then(|mut a| a.next());
            let Some(peer) = peer else {
                tracing::warn!("a linked hub's endpoint does not resolve; its link stays down");
                continue;
            };
            let t = self.rt.block_on(tunnel::start(
                &link::interface(&l.name),
                self.enroll.mtu,
                key_bytes(&l.dial_private)?,
                key_bytes(&l.peer_hub_key)?,
                peer,
            ));
            match t {
                Ok(t) => {
                    running.insert(l.name.clone(), t);
                }
                Err(err) => {
                    return Err(ApiError::Internal(format!(
                        "cannot bring the link's tunnel up: {err}"
                    )))
                }
            }
        }
        let up: Vec<Link> = links
            .into_iter()
            .filter(|l| running.contains_key(&l.name))
            .collect();
        link::host::apply(&LinkNet::of(&up), &self.hub_tun)
            .map_err(|why| ApiError::Internal(format!("cannot route the links: {why}")))
    }

    /// At start: every confirmed link up, and each other side told what this one exports.
    pub fn start_links(&self) {
        link::host::clear();
        let links = {
            let store = self.store.lock();
            if let Err(e) = self.apply_links(&store) {
                tracing::warn!(error = %e, "links not brought up");
            }
            store.links().unwrap_or_default()
        };
        for l in links {
            self.push_exports(&l.name);
        }
    }

    /// Tells the other side of link `name` what this side exports to it now.
    pub(super) fn push_exports(&self, name: &str) {
        let (l, exports) = {
            let store = self.store.lock();
            let Some(l) = store
                .links()
                .unwrap_or_default()
                .into_iter()
                .find(|l| l.name.eq_ignore_ascii_case(name))
            else {
                return;
            };
            let ex = exports_of(&store, &l.name).unwrap_or_default();
            (l, ex)
        };
        let call = LinkCall {
            secret: l.secret.clone(),
            exports: Some(exports),
            ..Default::default()
        };
        if let Err(e) = self.call_peer::<_, serde_json::Value>(&l, "/link/exports", &call) {
            tracing::warn!(error = %e, "the linked hub was not told what is exported to it");
        }
    }

    /// Whether `with` is a link (its exports changed: the other side must hear of it).
    pub(super) fn is_link(&self, store: &Store, with: &ShareWith) -> bool {
        matches!(with, ShareWith::Person(p) if store.person(p).ok().flatten().is_some_and(|p| p.role == Role::Link))
    }

    /// A's side of step 2: the other hub joins with a code.
    pub fn link_join(&self, req: &LinkJoin) -> Result<LinkJoined, ApiError> {
        let Some(code) = super::normalize_code(&req.code) else {
            return Err(refused("that is not a link code"));
        };
        check_facts(&req.facts)?;
        let dial = KeyPair::generate();
        let facts = self.hub_facts(&dial.public_b64())?;
        let mut store = self.store.lock();
        let Some(name) = store.take_link_code(&sha256(&code), crate::store::unix_now())? else {
            return Err(refused(
                "this link code is not known, was used already or has expired; ask for a new one",
            ));
        };
        self.check_link_name(&store, &name)?;
        let import_prefix = self.pick_prefix(&store, req.facts.overlay.prefix_len())?;
        let address = self.register_link_peer(&mut store, &name, &req.facts.dial_key)?;
        let secret = {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
        };
        let l = Link {
            name: name.clone(),
            peer_https: req.facts.https.clone(),
            peer_pin: req.facts.pin.clone(),
            peer_endpoint: req.facts.endpoint.clone(),
            peer_hub_key: req.facts.hub_key.clone(),
            peer_overlay: req.facts.overlay,
            dial_private: dial.private_b64(),
            // Pending until the other side confirms.
            dial_address: std::net::Ipv4Addr::UNSPECIFIED,
            import_prefix,
            secret: secret.clone(),
            exports: vec![],
            created_at: crate::store::unix_now(),
        };
        if let Err(e) = store.put_link(&l) {
            let _ = store.remove_person(&name);
            return Err(e.into());
        }
        self.apply_devices(&store)?;
        Ok(LinkJoined {
            facts,
            secret,
            your_address: address,
        })
    }

    /// The link whose secret a call carries.
    fn link_by_secret(&self, store: &Store, secret: &str) -> Result<Link, ApiError> {
        store
            .links()?
            .into_iter()
            .find(|l| !secret.is_empty() && crate::daemon::control::same(&l.secret, secret))
            .ok_or_else(|| refused("no link here has that secret"))
    }

    /// A linked hub's call: confirm (step 3), its exports, or its removal of the link.
    pub fn link_call(&self, what: &str, req: &LinkCall) -> Result<(), ApiError> {
        let store = self.store.lock();
        let mut l = self.link_by_secret(&store, &req.secret)?;
        match what {
            "confirm" => {
                let Some(a) = req.your_address else {
                    return Err(bad("confirm names the address"));
                };
                if !l.peer_overlay.contains(&a) {
                    return Err(bad("that address is not in the other side's overlay"));
                }
                l.dial_address = a;
                l.exports = req.exports.clone().unwrap_or_default();
                store.put_link(&l)?;
                self.apply_devices(&store)?;
                self.apply_links(&store)?;
                drop(store);
                self.push_exports(&l.name);
            }
            "exports" => {
                l.exports = req.exports.clone().unwrap_or_default();
                store.put_link(&l)?;
                self.apply_devices(&store)?;
            }
            "remove" => self.drop_link(&store, &l)?,
            _ => return Err(ApiError::NotFound("no such link call".into())),
        }
        Ok(())
    }

    /// POSTs `body` to the hub at the other end of `l` and reads its JSON answer.
    fn call_peer<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        l: &Link,
        path: &str,
        body: &B,
    ) -> Result<T, ApiError> {
        self.call_hub(&peer_target(l)?, path, body)
    }

    /// POSTs `body` to the other hub and reads its JSON answer.
    fn call_hub<B: serde::Serialize, T: serde::de::DeserializeOwned>(
        &self,
        target: &InviteLink,
        path: &str,
        body: &B,
    ) -> Result<T, ApiError> {
        let text = serde_json::to_string(body).map_err(|e| ApiError::Internal(e.to_string()))?;
        let (status, answer) = self
            .rt
            .block_on(post_json(target, path, text))
            .map_err(|e| ApiError::BadGateway(format!("the other hub: {e:#}")))?;
        let v: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
        if !(200..300).contains(&status) {
            let why = v["error"].as_str().unwrap_or("no reason given").to_string();
            return Err(ApiError::BadGateway(format!(
                "the other hub refused: {why}"
            )));
        }
        serde_json::from_value(v)
            .map_err(|e| ApiError::BadGateway(format!("the other hub's answer does not read: {e}")))
    }
}

/// What this side exports to link `name`: the devices shared with it and their addresses.
fn exports_of(store: &Store, name: &str) -> Result<Vec<Export>, ApiError> {
    let devices = store.devices()?;
    let mut out: Vec<Export> = Vec::new();
    for s in store.shares()? {
        if s.with != ShareWith::Person(name.to_string())
            && !matches!(&s.with, ShareWith::Person(p) if p.eq_ignore_ascii_case(name))
        {
            continue;
        }
        if let Some(d) = devices
            .iter()
            .find(|d| d.name.eq_ignore_ascii_case(&s.device))
        {
            if !out.iter().any(|e| e.name == d.name) {
                out.push(Export {
                    name: d.name.clone(),
                    ipv4: d.ipv4,
                });
            }
        }
    }
    Ok(out)
}

/// The other hub's HTTPS listener, as a call target.
fn peer_target(l: &Link) -> Result<InviteLink, ApiError> {
    let mut t = parse_hub_link(&format!("{}/link#code=x", l.peer_https), "link").map_err(|_| {
        ApiError::Internal("the stored HTTPS address of a linked hub does not read".into())
    })?;
    t.pin = l.peer_pin.clone();
    Ok(t)
}

fn view(l: &Link) -> LinkView {
    LinkView {
        name: l.name.clone(),
        peer: l.peer_https.clone(),
        import_prefix: l.import_prefix.to_string(),
        imported: l
            .exports
            .iter()
            .map(|e| (e.name.clone(), link::import_addr(l, e.ipv4)))
            .collect(),
        up: !l.dial_address.is_unspecified(),
        handshake_secs_ago: None,
    }
}
