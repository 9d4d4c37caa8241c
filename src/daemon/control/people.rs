//! People, sharing and invites: the parts of [`Control`] that decide who a device belongs to,
//! what a guest's device may reach, and how an invited device joins. Every change is put in
//! force (the devices' firewalls and names) before the call returns.

use super::{bad, check_device_name, sha256, Control};
use crate::api::{
    ApiError, InviteCreated, NewInvite, NewPerson, PersonPatch, Redeem, Redeemed, ShareReq,
};
use crate::enroll;
use crate::firewall::{Reach, ReachTarget};
use crate::store::{Invite, InviteRefusal, Person, Role, Share, ShareWith, Store};

/// Letters of an invite code: no 0/O, 1/I look-alikes; 32 of them = 5 bits each.
const CODE_ALPHABET: &[u8; 32] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
/// Characters of a code (80 bits).
const CODE_LEN: usize = 16;
/// An invite lives this long unless `--expires` says otherwise.
const DEFAULT_EXPIRY_S: i64 = 7 * 86_400;
/// At most this many devices per invite.
const MAX_USES: u32 = 100;

/// Where invite links point, read from the config.
#[derive(Debug, Clone, Default)]
pub struct InviteSettings {
    /// `https://HOST[:PORT]`; empty when the hub has no public name or address.
    pub base: String,
}

/// A fresh code, `XXXX-XXXX-XXXX-XXXX`.
pub(super) fn new_code() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    let mut s = String::with_capacity(CODE_LEN + 3);
    for i in 0..CODE_LEN {
        if i > 0 && i % 4 == 0 {
            s.push('-');
        }
        s.push(CODE_ALPHABET[rng.random_range(0..32)] as char);
    }
    s
}

/// A code as typed (any case, dashes or spaces) in its one form, or `None` when it cannot be
/// one.
pub fn normalize_code(code: &str) -> Option<String> {
    let s: String = code
        .chars()
        .filter(|c| *c != '-' && !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    (s.len() == CODE_LEN && s.bytes().all(|b| CODE_ALPHABET.contains(&b))).then_some(s)
}

fn check_person_name(name: &str) -> Result<(), ApiError> {
    if !crate::dns::name::is_valid_label(name) || name.eq_ignore_ascii_case("owner") {
        return Err(bad(format!(
            "{name:?} is not a person's name: use letters, digits and dashes (up to 63), not \"owner\""
        )));
    }
    Ok(())
}

fn no_person(name: &str) -> ApiError {
    ApiError::NotFound(format!(
        "no person named {name:?}; `cloudpc person list` shows them, `cloudpc person add` adds one"
    ))
}

impl Control {
    /// The SHA-256 of the certificate served, for links that pin it: `None` when a public CA
    /// vouches for it (ACME), or without a running hub.
    pub(super) fn cert_pin(&self) -> Option<String> {
        let c = self.engines.as_ref()?.certs.current();
        (c.source != crate::certs::CertSource::Acme).then_some(c.sha256)
    }

    pub(super) fn find_person(&self, store: &Store, name: &str) -> Result<Person, ApiError> {
        store.person(name)?.ok_or_else(|| no_person(name))
    }

    pub(super) fn people_list(&self) -> Result<Vec<Person>, ApiError> {
        Ok(self.store.lock().people()?)
    }

    pub(super) fn person_add(&self, req: &NewPerson) -> Result<Person, ApiError> {
        check_person_name(&req.name)?;
        if req.role == Role::Link {
            return Err(bad(
                "a linked Cloud PC is added with `cloudpc link`, not as a person",
            ));
        }
        let p = Person {
            name: req.name.clone(),
            role: req.role,
            internet: req.internet,
            created_at: crate::store::unix_now(),
        };
        let store = self.store.lock();
        if !store.add_person(&p)? {
            return Err(ApiError::Conflict(format!(
                "a person named {:?} already exists; `cloudpc person set` changes them",
                req.name
            )));
        }
        Ok(p)
    }

    pub(super) fn person_update(
        &self,
        name: &str,
        patch: &PersonPatch,
    ) -> Result<Person, ApiError> {
        if *patch == PersonPatch::default() {
            return Err(bad("nothing to change: give role or internet"));
        }
        let store = self.store.lock();
        let mut p = self.find_person(&store, name)?;
        if p.role == Role::Link || patch.role == Some(Role::Link) {
            return Err(bad("links are changed with `cloudpc link`"));
        }
        if let Some(r) = patch.role {
            p.role = r;
        }
        if let Some(i) = patch.internet {
            p.internet = i;
        }
        store.update_person(&p)?;
        self.apply_devices(&store)?;
        Ok(p)
    }

    pub(super) fn person_remove(&self, name: &str) -> Result<Vec<String>, ApiError> {
        let store = self.store.lock();
        let p = self.find_person(&store, name)?;
        if p.role == Role::Link {
            return Err(bad(format!(
                "{} is a link: `cloudpc link remove {}` cuts it",
                p.name, p.name
            )));
        }
        let gone = store.remove_person(&p.name)?;
        self.apply_devices(&store)?;
        Ok(gone)
    }

    pub(super) fn shares_list(&self) -> Result<Vec<Share>, ApiError> {
        Ok(self.store.lock().shares()?)
    }

    /// Reads `nas[:PORTS]` and `alice|group:team` against what exists.
    fn share_parts(
        &self,
        store: &Store,
        req: &ShareReq,
    ) -> Result<(String, Option<String>, ShareWith), ApiError> {
        let r = Reach::parse(&req.target).map_err(|e| {
            bad(format!(
                "{e}; share a device as NAME or NAME:PORTS (e.g. nas:445 or nas:8000-8100)"
            ))
        })?;
        let ReachTarget::Device(name) = &r.target else {
            return Err(bad("share a device (NAME or NAME:PORTS), not a group"));
        };
        let device = store.device(name)?;
        let ports = req
            .target
            .split_once(':')
            .map(|(_, p)| p.trim().to_string());
        let with = ShareWith::parse(req.with.trim());
        match &with {
            ShareWith::Person(n) => {
                self.find_person(store, n)?;
            }
            ShareWith::Group(g) => self.check_group(g)?,
        }
        Ok((device.name, ports, with))
    }

    pub(super) fn share_add(&self, req: &ShareReq) -> Result<Share, ApiError> {
        let store = self.store.lock();
        let (device, ports, with) = self.share_parts(&store, req)?;
        let with = match with {
            // The person's name as stored.
            ShareWith::Person(n) => ShareWith::Person(self.find_person(&store, &n)?.name),
            g => g,
        };
        let s = store.add_share(&device, ports.as_deref().unwrap_or(""), &with)?;
        self.apply_devices(&store)?;
        let link = self.is_link(&store, &with);
        drop(store);
        if link {
            self.push_exports(&s.with.to_string());
        }
        Ok(s)
    }

    pub(super) fn share_remove(&self, req: &ShareReq) -> Result<usize, ApiError> {
        let store = self.store.lock();
        let (device, ports, with) = self.share_parts(&store, req)?;
        let n = store.remove_share(&device, ports.as_deref(), &with)?;
        if n == 0 {
            return Err(ApiError::NotFound(format!(
                "{} is not shared with {}; `cloudpc share list` shows the shares",
                req.target, req.with
            )));
        }
        self.apply_devices(&store)?;
        let link = self.is_link(&store, &with);
        drop(store);
        if link {
            self.push_exports(&with.to_string());
        }
        Ok(n)
    }

    pub(super) fn invites_list(&self) -> Result<Vec<Invite>, ApiError> {
        Ok(self.store.lock().invites()?)
    }

    pub(super) fn invite_create(&self, req: &NewInvite) -> Result<InviteCreated, ApiError> {
        let expires = match req.expires.as_deref() {
            None => DEFAULT_EXPIRY_S,
            Some(s) => crate::querylog::timefmt::parse_duration_ms(s)
                .filter(|ms| *ms >= 1000)
                .map(|ms| ms / 1000)
                .ok_or_else(|| {
                    bad(format!(
                        "{s:?} is not an expiry: use a duration of a second or more, e.g. 30m, 12h, 7d"
                    ))
                })?,
        };
        let uses = req.uses.unwrap_or(1);
        if uses == 0 || uses > MAX_USES {
            return Err(bad(format!("uses must be 1 to {MAX_USES}")));
        }
        if self.invites.base.is_empty() {
            return Err(bad(
                "invite links need the hub's public name or address: set wireguard.endpoint (or tls.domain) in the config",
            ));
        }
        let code = new_code();
        let hash = sha256(&normalize_code(&code).unwrap_or_default());
        let store = self.store.lock();
        let p = self.find_person(&store, &req.person)?;
        let invite = store.add_invite(&hash, &p.name, crate::store::unix_now() + expires, uses)?;
        let mut link = format!("{}/invite#code={code}", self.invites.base);
        if let Some(pin) = self.cert_pin() {
            link.push_str(&format!("&pin={pin}"));
        }
        Ok(InviteCreated { invite, code, link })
    }

    pub(super) fn invite_revoke(&self, id: i64) -> Result<(), ApiError> {
        if !self.store.lock().revoke_invite(id)? {
            return Err(ApiError::NotFound(format!(
                "no invite with id {id}; `cloudpc invite list` shows them"
            )));
        }
        Ok(())
    }

    /// A device joins with an invite code and its own public key (public: the caller is not
    /// on the network yet). The hub never sees the device's private key.
    pub fn redeem_invite(&self, req: &Redeem) -> Result<Redeemed, ApiError> {
        let refused = |why: &str| ApiError::Forbidden(format!("{why}; ask for a new invite"));
        let Some(code) = normalize_code(&req.code) else {
            return Err(refused("that is not an invite code"));
        };
        let key = enroll::new_device_key(Some(&req.public_key))
            .map_err(|e| bad(format!("{e}: send the device's WireGuard public key")))?;
        if let Some(n) = &req.name {
            check_device_name(n)?;
            // `hub` names the hub itself; `link-*` are the links' devices.
            if n.eq_ignore_ascii_case("hub") || n.to_ascii_lowercase().starts_with("link-") {
                return Err(bad(format!("{n:?} is reserved; pick another name")));
            }
        }
        self.enroll.check().map_err(|e| bad(e.to_string()))?;
        let mut store = self.store.lock();
        let (id, person) = match store.take_invite(&sha256(&code), crate::store::unix_now())? {
            Ok(x) => x,
            Err(InviteRefusal::Unknown) => return Err(refused("this invite code is not known")),
            Err(InviteRefusal::Revoked) => return Err(refused("this invite was revoked")),
            Err(InviteRefusal::Expired) => return Err(refused("this invite has expired")),
            Err(InviteRefusal::UsedUp) => return Err(refused("this invite has been used up")),
        };
        let registered = (|| {
            let p = self.find_person(&store, &person)?;
            let name = match &req.name {
                Some(n) => n.clone(),
                None => {
                    let taken = store.devices()?;
                    (1..)
                        .map(|i| format!("{}-{i}", p.name.to_ascii_lowercase()))
                        .find(|n| !taken.iter().any(|d| d.name.eq_ignore_ascii_case(n)))
                        .unwrap_or_default()
                }
            };
            // A device that may not use the internet gets a split tunnel: a full one would
            // leave it offline.
            let split = p.role == Role::Guest && !p.internet_allowed();
            let patch = crate::store::DevicePatch {
                person: Some(Some(p.name.clone())),
                ..Default::default()
            };
            let device = store.add_device_with(&name, &key.public, split, &self.overlay, &patch)?;
            Ok::<_, ApiError>(device)
        })();
        let device = match registered {
            Ok(d) => d,
            Err(e) => {
                let _ = store.give_back_invite(id);
                // Say what to change, not which device of the owner has that name or key.
                return Err(match e {
                    ApiError::Conflict(_) => ApiError::Conflict(
                        "that name or key is taken here; pick another name (or make a new key)"
                            .into(),
                    ),
                    e => e,
                });
            }
        };
        let config = match self.enroll.device_config(&device, None) {
            Ok(c) => c,
            Err(e) => {
                let _ = store.remove_device(&device.name);
                let _ = store.give_back_invite(id);
                return Err(bad(e.to_string()));
            }
        };
        self.apply_devices(&store)?;
        Ok(Redeemed { device, config })
    }
}

impl crate::drop::localsend::Senders for Control {
    /// The owner's and members' devices may drop files; their files go to the owner's
    /// query-log keys when set (else the hub's own key).
    fn sender(&self, ip: std::net::IpAddr) -> Option<(String, Vec<age::x25519::Recipient>)> {
        let d = self.device_at(ip)?;
        let store = self.store.lock();
        if let Some(p) = &d.person {
            if store.person(p).ok()??.role.is_outsider() {
                return None;
            }
        }
        let keys = store
            .querylog_meta()
            .ok()
            .and_then(|m| crate::querylog::settings::LogSettings::from_meta(&m).recipients)
            .map(|r| r.keys().to_vec())
            .unwrap_or_default();
        Some((d.name, keys))
    }

    fn may_send(&self, from: std::net::IpAddr, to: &str) -> Result<(), String> {
        // A device sends files only to the devices it may open connections to: its `reach`,
        // and no guest's device that `reach` does not name.
        let target = self.store.lock().device(to).map_err(|e| e.to_string())?;
        let t = std::net::IpAddr::V4(target.ipv4);
        if let Some(fw) = self.engines().ok().and_then(|e| e.firewall.device(from)) {
            let r = fw.rules();
            let named = r
                .reach
                .as_ref()
                .map(|l| l.iter().any(|a| a.v4 == target.ipv4));
            if named == Some(false) || (named.is_none() && r.quarantined.contains(&t)) {
                return Err(format!("this device may not reach {to}"));
            }
        }
        Ok(())
    }

    fn forward(&self, id: &str, to: &str) -> Result<String, String> {
        self.drop_send(id, to).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_read_back_in_any_case_and_spacing_and_nothing_else_does() {
        let c = new_code();
        assert_eq!(c.len(), CODE_LEN + 3);
        let n = normalize_code(&c).unwrap();
        assert_eq!(normalize_code(&c.to_lowercase()), Some(n.clone()));
        assert_eq!(normalize_code(&n.replace('-', " ")), Some(n));
        assert_eq!(normalize_code("ABCD-EFGH-JKLM-NPQ0"), None);
        assert_eq!(normalize_code("ABCD"), None);
        assert_eq!(normalize_code("../../etc/passwd"), None);
    }
}
