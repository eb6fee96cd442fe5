//! What crosses the peer port: hellos, their proof of the shared secret,
//! and claims in their proto form. Pure.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use ipnetwork::Ipv4Network;
use ring::hmac;
use tartan_proto::v1::{PeerHello, SegmentClaim};

use crate::segment::book::{Claim, DEFAULT_PEER_PORT};

/// How far a hello's clock may be from ours: it bounds how long a captured
/// hello can be replayed, and tolerates hosts whose clocks drift.
const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// `--peer-secret`, as a key.
#[derive(Clone)]
pub struct PeerSecret(hmac::Key);

impl PeerSecret {
    pub fn new(secret: &str) -> PeerSecret {
        PeerSecret(hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes()))
    }
}

impl std::fmt::Debug for PeerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerSecret(..)")
    }
}

fn signed_text(hello: &PeerHello) -> String {
    format!(
        "tartan-peer\n{}\n{}\n{}",
        hello.host, hello.port, hello.sent_unix_ms
    )
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A hello from `local`, stamped now and signed with `secret` if there is one.
pub fn hello(
    local: SocketAddrV4,
    add_back: bool,
    claims: &[Claim],
    secret: Option<&PeerSecret>,
) -> PeerHello {
    let mut hello = PeerHello {
        host: local.ip().to_string(),
        port: u32::from(local.port()),
        add_back,
        claims: claims.iter().map(claim_to_proto).collect(),
        sent_unix_ms: unix_ms(SystemTime::now()),
        proof: Vec::new(),
    };
    if let Some(PeerSecret(key)) = secret {
        hello.proof = hmac::sign(key, signed_text(&hello).as_bytes())
            .as_ref()
            .to_vec();
    }
    hello
}

/// Checks a hello's proof against our secret; both sides must have one, or neither.
pub fn verify(hello: &PeerHello, secret: Option<&PeerSecret>, now: SystemTime) -> Result<()> {
    match (secret, hello.proof.is_empty()) {
        (None, true) => Ok(()),
        (None, false) => bail!("it sends a peer secret and this host has none (--peer-secret)"),
        (Some(_), true) => bail!("it sends no peer secret and this host has one (--peer-secret)"),
        (Some(PeerSecret(key)), false) => {
            hmac::verify(key, signed_text(hello).as_bytes(), &hello.proof)
                .map_err(|_| anyhow!("the peer secret does not match"))?;
            let sent = UNIX_EPOCH + Duration::from_millis(hello.sent_unix_ms);
            let skew = now
                .duration_since(sent)
                .unwrap_or_else(|ahead| ahead.duration());
            if skew > CLOCK_SKEW {
                bail!(
                    "its clock is {} away from this host's (at most {} is taken)",
                    humantime::format_duration(Duration::from_secs(skew.as_secs())),
                    humantime::format_duration(CLOCK_SKEW)
                );
            }
            Ok(())
        }
    }
}

/// Where a hello says its sender is reached.
pub fn sender(hello: &PeerHello) -> Result<SocketAddrV4> {
    let ip: Ipv4Addr = hello
        .host
        .parse()
        .with_context(|| format!("a hello from a bad address {:?}", hello.host))?;
    let port = u16::try_from(hello.port)
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| anyhow!("a hello with a bad port {}", hello.port))?;
    Ok(SocketAddrV4::new(ip, port))
}

pub fn claim_to_proto(claim: &Claim) -> SegmentClaim {
    SegmentClaim {
        address: claim.address.to_string(),
        mac: tartan_dataplane::format_mac(&claim.mac),
        container: claim.container.clone(),
        host: claim.host.to_string(),
    }
}

/// A peer's claim; `host` is the peer's, whatever the claim says.
pub fn claim_from_proto(claim: &SegmentClaim, host: Ipv4Addr) -> Result<Claim> {
    let address: Ipv4Network = claim
        .address
        .parse()
        .with_context(|| format!("a claim with a bad address {:?}", claim.address))?;
    Ok(Claim {
        address,
        mac: tartan_dataplane::parse_mac(&claim.mac)
            .with_context(|| format!("a claim on {address} with a bad MAC"))?,
        container: claim.container.clone(),
        host,
    })
}

/// A peer's claims; malformed ones are dropped, each reported.
pub fn claims_from_proto(claims: &[SegmentClaim], host: Ipv4Addr) -> (Vec<Claim>, Vec<String>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for claim in claims {
        match claim_from_proto(claim, host) {
            Ok(claim) => good.push(claim),
            Err(err) => bad.push(format!("{err:#}")),
        }
    }
    (good, bad)
}

/// `HOST` or `HOST:PORT`, as `connect` and `forget` take them: the host and
/// the port (6783 when not given). A host name is resolved by the caller.
pub fn split_peer(text: &str) -> Result<(String, u16)> {
    let text = text.trim();
    if text.is_empty() {
        bail!("an empty peer address");
    }
    match text.rsplit_once(':') {
        Some((host, port)) => {
            let port: u16 =
                port.parse().ok().filter(|port| *port != 0).ok_or_else(|| {
                    anyhow!("bad peer address {text:?}: the port must be 1 to 65535")
                })?;
            if host.is_empty() || host.contains(':') {
                bail!("bad peer address {text:?}: give HOST or HOST:PORT (IPv4)");
            }
            Ok((host.to_string(), port))
        }
        None => Ok((text.to_string(), DEFAULT_PEER_PORT)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 6783)
    }

    #[test]
    fn a_signed_hello_verifies_only_with_the_same_secret() {
        let secret = PeerSecret::new("s3cret");
        let signed = hello(local(), true, &[], Some(&secret));
        assert!(verify(&signed, Some(&secret), SystemTime::now()).is_ok());
        let wrong = verify(&signed, Some(&PeerSecret::new("other")), SystemTime::now())
            .expect_err("another secret");
        assert_eq!(wrong.to_string(), "the peer secret does not match");
        let unsigned = hello(local(), true, &[], None);
        assert!(verify(&unsigned, None, SystemTime::now()).is_ok());
        assert!(verify(&unsigned, Some(&secret), SystemTime::now()).is_err());
        assert!(verify(&signed, None, SystemTime::now()).is_err());
    }

    #[test]
    fn a_tampered_or_stale_hello_is_refused() {
        let secret = PeerSecret::new("s3cret");
        let mut signed = hello(local(), true, &[], Some(&secret));
        signed.host = "10.0.0.9".into();
        assert!(verify(&signed, Some(&secret), SystemTime::now()).is_err());
        let signed = hello(local(), true, &[], Some(&secret));
        let later = SystemTime::now() + Duration::from_secs(600);
        let stale = verify(&signed, Some(&secret), later).expect_err("ten minutes later");
        assert!(stale.to_string().contains("clock"), "{stale}");
    }

    #[test]
    fn peer_addresses_take_an_optional_port() {
        assert_eq!(
            split_peer("192.168.0.20").expect("host"),
            ("192.168.0.20".into(), 6783)
        );
        assert_eq!(
            split_peer("node2:7000").expect("port"),
            ("node2".into(), 7000)
        );
        for bad in ["", "h:0", "h:x", ":1", "h:99999", "fe80::1"] {
            assert!(split_peer(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn claims_round_trip_and_carry_their_sender() {
        let claim = Claim {
            address: "10.32.0.5/12".parse().expect("cidr"),
            mac: [2, 0x42, 10, 32, 0, 5],
            container: "c1".into(),
            host: Ipv4Addr::new(10, 0, 0, 9),
        };
        let back = claim_from_proto(&claim_to_proto(&claim), Ipv4Addr::new(10, 0, 0, 2))
            .expect("round trip");
        assert_eq!(back.address, claim.address);
        assert_eq!(back.mac, claim.mac);
        assert_eq!(back.host, Ipv4Addr::new(10, 0, 0, 2));
        let (good, bad) = claims_from_proto(
            &[SegmentClaim {
                address: "junk".into(),
                ..claim_to_proto(&claim)
            }],
            Ipv4Addr::new(10, 0, 0, 2),
        );
        assert!(good.is_empty());
        assert_eq!(bad.len(), 1);
    }
}
