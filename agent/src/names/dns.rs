//! The fabric's DNS, without I/O: a query's bytes and the name table in,
//! the answer's bytes (or "ask the host's resolvers") out. Only the header
//! and the question are read (RFC 1035 §4.1); container names are answered
//! here, everything else is forwarded.

use std::net::{IpAddr, Ipv4Addr};

/// Seconds a resolver may keep an answer: short, as names come and go.
pub const ANSWER_TTL: u32 = 10;

const HEADER_LEN: usize = 12;
const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const TYPE_ANY: u16 = 255;
const CLASS_IN: u16 = 1;
const RCODE_FORMERR: u8 = 1;
const RCODE_SERVFAIL: u8 = 2;
const RCODE_NOTIMP: u8 = 4;
/// A name is at most 255 octets on the wire (RFC 1035 §2.3.4).
const MAX_NAME: usize = 255;

/// The bridge's address may be set just after the address book is
/// published: how long binding to it is retried.
pub const BIND_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// Where the agent answers DNS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DnsStatus {
    /// The bridge address it last tried to bind; None before the node has
    /// a bridge, and while it binds.
    pub bridge: Option<Ipv4Addr>,
    /// Whether it answers there.
    pub bound: bool,
}

impl DnsStatus {
    pub fn serving(&self) -> Option<Ipv4Addr> {
        self.bridge.filter(|_| self.bound)
    }
}

/// What to do with a query.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Send these bytes back.
    Answer(Vec<u8>),
    /// Not a container's name: ask the host's resolvers.
    Forward,
    /// Not a query (a response, or too short to answer): say nothing.
    Drop,
}

/// The one question of a query.
#[derive(Debug, PartialEq, Eq)]
pub struct Question {
    /// Lower case, without the root's trailing dot.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    /// Where the question ends in the message.
    end: usize,
}

/// Answers `query` from `lookup` (a lower-case name to its addresses; None
/// for a name that is no container's).
pub fn respond(query: &[u8], lookup: impl Fn(&str) -> Option<Vec<IpAddr>>) -> Outcome {
    if query.len() < HEADER_LEN || query[2] & 0x80 != 0 {
        return Outcome::Drop;
    }
    let opcode = (query[2] >> 3) & 0x0f;
    if opcode != 0 {
        return Outcome::Answer(error_reply(query, None, RCODE_NOTIMP));
    }
    let question = match parse_question(query) {
        Some(question) => question,
        None => return Outcome::Answer(error_reply(query, None, RCODE_FORMERR)),
    };
    if question.qclass != CLASS_IN {
        return Outcome::Forward;
    }
    let Some(addresses) = lookup(&question.name) else {
        return Outcome::Forward;
    };
    let wanted: Vec<IpAddr> = addresses
        .into_iter()
        .filter(|a| {
            matches!(
                (question.qtype, a),
                (TYPE_A, IpAddr::V4(_)) | (TYPE_AAAA, IpAddr::V6(_)) | (TYPE_ANY, _)
            )
        })
        .collect();
    // A container's name with no address of the type asked for is still
    // known: an empty answer (NODATA), not a forward, as Docker's DNS does.
    Outcome::Answer(answer(query, &question, &wanted))
}

/// A SERVFAIL reply to `query`, for when no resolver answered it.
pub fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < HEADER_LEN {
        return None;
    }
    let question = parse_question(query);
    Some(error_reply(query, question.as_ref(), RCODE_SERVFAIL))
}

/// Reads the header's counts and the single question; None when malformed
/// or when there is not exactly one question.
pub fn parse_question(message: &[u8]) -> Option<Question> {
    if message.len() < HEADER_LEN || u16::from_be_bytes([message[4], message[5]]) != 1 {
        return None;
    }
    let mut at = HEADER_LEN;
    let mut labels: Vec<String> = Vec::new();
    let mut wire_len = 1;
    loop {
        let len = usize::from(*message.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        // A question's name is never compressed (it is the first name).
        if len > 63 {
            return None;
        }
        wire_len += len + 1;
        if wire_len > MAX_NAME {
            return None;
        }
        let label = message.get(at..at + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        at += len;
    }
    let fixed = message.get(at..at + 4)?;
    Some(Question {
        name: labels.join("."),
        qtype: u16::from_be_bytes([fixed[0], fixed[1]]),
        qclass: u16::from_be_bytes([fixed[2], fixed[3]]),
        end: at + 4,
    })
}

/// The reply's header: the query's id and RD, QR and RA set, `rcode`.
fn reply_header(query: &[u8], rcode: u8, questions: u16, answers: u16) -> Vec<u8> {
    let mut reply = Vec::with_capacity(512);
    reply.extend_from_slice(&query[0..2]);
    reply.push(0x80 | (query[2] & 0x01));
    reply.push(0x80 | rcode);
    reply.extend_from_slice(&questions.to_be_bytes());
    reply.extend_from_slice(&answers.to_be_bytes());
    reply.extend_from_slice(&[0, 0, 0, 0]);
    reply
}

fn error_reply(query: &[u8], question: Option<&Question>, rcode: u8) -> Vec<u8> {
    match question {
        Some(question) => {
            let mut reply = reply_header(query, rcode, 1, 0);
            reply.extend_from_slice(&query[HEADER_LEN..question.end]);
            reply
        }
        None => reply_header(query, rcode, 0, 0),
    }
}

fn answer(query: &[u8], question: &Question, addresses: &[IpAddr]) -> Vec<u8> {
    // Far fewer than 65535 addresses per name; the cap keeps the count true.
    let addresses = &addresses[..addresses.len().min(64)];
    let mut reply = reply_header(query, 0, 1, addresses.len() as u16);
    // Authoritative: the fabric's names are this server's own.
    reply[2] |= 0x04;
    reply.extend_from_slice(&query[HEADER_LEN..question.end]);
    for address in addresses {
        // The name, as a pointer to the question's (at offset 12).
        reply.extend_from_slice(&[0xc0, 0x0c]);
        let (rtype, data): (u16, Vec<u8>) = match address {
            IpAddr::V4(v4) => (TYPE_A, v4.octets().to_vec()),
            IpAddr::V6(v6) => (TYPE_AAAA, v6.octets().to_vec()),
        };
        reply.extend_from_slice(&rtype.to_be_bytes());
        reply.extend_from_slice(&CLASS_IN.to_be_bytes());
        reply.extend_from_slice(&ANSWER_TTL.to_be_bytes());
        reply.extend_from_slice(&(data.len() as u16).to_be_bytes());
        reply.extend_from_slice(&data);
    }
    reply
}

/// The nameservers of a resolv.conf, in order.
pub fn nameservers(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next()?.parse().ok())
                .flatten()
        })
        .collect()
}

/// A container's resolv.conf that names the agent at `server` as its only
/// resolver, with the host's `search`, `domain` and `options` lines.
pub fn container_resolv_conf(host: &str, server: Ipv4Addr) -> String {
    let mut conf = format!("nameserver {server}\n");
    for line in host.lines() {
        let keyword = line.split_whitespace().next();
        if matches!(keyword, Some("search" | "domain" | "options")) {
            conf.push_str(line.trim());
            conf.push('\n');
        }
    }
    conf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
        // RD set, one question.
        let mut q = id.to_be_bytes().to_vec();
        q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
        for label in name.split('.').filter(|l| !l.is_empty()) {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        q
    }

    fn table(name: &str) -> Option<Vec<IpAddr>> {
        match name {
            "web" | "db-alias" => Some(vec![IpAddr::V4(Ipv4Addr::new(10, 5, 1, 2))]),
            "two" => Some(vec![
                IpAddr::V4(Ipv4Addr::new(10, 5, 1, 3)),
                IpAddr::V4(Ipv4Addr::new(10, 5, 2, 3)),
            ]),
            _ => None,
        }
    }

    fn answers(reply: &[u8]) -> (u16, u8, Vec<Ipv4Addr>) {
        let id = u16::from_be_bytes([reply[0], reply[1]]);
        let rcode = reply[3] & 0x0f;
        let count = u16::from_be_bytes([reply[6], reply[7]]);
        let question = parse_question(reply).expect("the reply repeats the question");
        let mut at = question.end;
        let mut addresses = Vec::new();
        for _ in 0..count {
            assert_eq!(&reply[at..at + 2], &[0xc0, 0x0c]);
            let rtype = u16::from_be_bytes([reply[at + 2], reply[at + 3]]);
            let len = usize::from(u16::from_be_bytes([reply[at + 10], reply[at + 11]]));
            assert_eq!(rtype, TYPE_A);
            let data = &reply[at + 12..at + 12 + len];
            addresses.push(Ipv4Addr::new(data[0], data[1], data[2], data[3]));
            at += 12 + len;
        }
        assert_eq!(at, reply.len());
        (id, rcode, addresses)
    }

    #[test]
    fn a_container_name_is_answered_whatever_its_case_and_root_dot() {
        for name in ["web", "WEB.", "Db-Alias"] {
            let Outcome::Answer(reply) = respond(&query(0x1234, name, TYPE_A), table) else {
                panic!("{name} was not answered");
            };
            assert_eq!(reply[2] & 0x80, 0x80, "QR");
            assert_eq!(reply[2] & 0x01, 0x01, "RD copied");
            assert_eq!(
                answers(&reply),
                (0x1234, 0, vec![Ipv4Addr::new(10, 5, 1, 2)])
            );
        }
        let Outcome::Answer(reply) = respond(&query(7, "two", TYPE_A), table) else {
            panic!("two was not answered");
        };
        assert_eq!(answers(&reply).2.len(), 2);
    }

    #[test]
    fn a_known_name_without_an_address_of_the_type_gets_an_empty_answer() {
        let Outcome::Answer(reply) = respond(&query(9, "web", TYPE_AAAA), table) else {
            panic!("AAAA of web was not answered");
        };
        assert_eq!(answers(&reply), (9, 0, vec![]));
    }

    #[test]
    fn other_names_are_forwarded_and_responses_dropped() {
        assert_eq!(
            respond(&query(1, "example.org", TYPE_A), table),
            Outcome::Forward
        );
        assert_eq!(
            respond(&query(1, "web.example.org", TYPE_A), table),
            Outcome::Forward
        );
        let mut response = query(1, "web", TYPE_A);
        response[2] |= 0x80;
        assert_eq!(respond(&response, table), Outcome::Drop);
        assert_eq!(respond(&[0, 1, 2], table), Outcome::Drop);
    }

    #[test]
    fn malformed_questions_get_formerr() {
        let mut truncated = query(3, "web", TYPE_A);
        truncated.truncate(truncated.len() - 3);
        let mut compressed = query(3, "web", TYPE_A);
        compressed[12] = 0xc0;
        let mut two = query(3, "web", TYPE_A);
        two[5] = 2;
        for bad in [truncated, compressed, two] {
            let Outcome::Answer(reply) = respond(&bad, table) else {
                panic!("no FORMERR");
            };
            assert_eq!(reply.len(), HEADER_LEN);
            assert_eq!(reply[3] & 0x0f, RCODE_FORMERR);
            assert_eq!(&reply[0..2], &[0, 3]);
        }
        let mut notify = query(4, "web", TYPE_A);
        notify[2] |= 4 << 3;
        let Outcome::Answer(reply) = respond(&notify, table) else {
            panic!("no NOTIMP");
        };
        assert_eq!(reply[3] & 0x0f, RCODE_NOTIMP);
    }

    #[test]
    fn servfail_repeats_the_question() {
        let q = query(5, "example.org", TYPE_A);
        let reply = servfail(&q).expect("a reply");
        assert_eq!(reply[3] & 0x0f, RCODE_SERVFAIL);
        assert_eq!(&reply[HEADER_LEN..], &q[HEADER_LEN..]);
        assert_eq!(servfail(&[1]), None);
    }

    #[test]
    fn resolv_conf_lines() {
        let host = "# generated\nsearch corp.example\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nnameserver 127.0.0.53\noptions ndots:2 edns0\n";
        assert_eq!(
            nameservers(host),
            vec![
                "10.0.0.2".parse::<IpAddr>().unwrap(),
                "127.0.0.53".parse().unwrap()
            ]
        );
        assert_eq!(
            container_resolv_conf(host, Ipv4Addr::new(10, 5, 1, 1)),
            "nameserver 10.5.1.1\nsearch corp.example\noptions ndots:2 edns0\n"
        );
    }
}
