//! The environment Docker's legacy links give the linking container
//! (`daemon/links` in Docker): for `--link NAME:ALIAS`, `ALIAS_NAME`, a URL
//! and its parts for each port the linked container exposes, and its
//! environment as `ALIAS_ENV_<VAR>`.

use std::net::Ipv4Addr;

/// What the linking container learns about one linked container.
pub struct Linked<'a> {
    /// The link's alias, as given.
    pub alias: &'a str,
    /// The linking container's name.
    pub linking: &'a str,
    pub address: Ipv4Addr,
    /// Its exposed ports: (port, "tcp" | "udp" | "sctp").
    pub ports: Vec<(u16, String)>,
    /// Its environment, as recorded (Tartan's defaults included).
    pub env: &'a [String],
}

/// Variables of the linked container's own environment left out: those
/// Docker leaves out (HOME, PATH), and HOSTNAME, which Docker adds at the
/// start rather than recording it.
const NOT_PASSED: [&str; 3] = ["HOME", "PATH", "HOSTNAME"];

/// The alias as a variable prefix: upper case, anything but letters,
/// digits and `_` as `_` (Docker turns only `-` into `_`).
pub fn prefix(alias: &str) -> String {
    alias
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

impl Linked<'_> {
    /// The variables, in Docker's order: the default port (the lowest, tcp
    /// before udp), each port's, the name, the environment.
    pub fn env(&self) -> Vec<String> {
        let alias = prefix(self.alias);
        let ip = self.address;
        let mut ports = self.ports.clone();
        ports.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| (a.1 != "tcp").cmp(&(b.1 != "tcp")))
        });
        ports.dedup();
        let mut env = Vec::new();
        if let Some((port, proto)) = ports.first() {
            env.push(format!("{alias}_PORT={proto}://{ip}:{port}"));
        }
        for (port, proto) in &ports {
            let var = format!("{alias}_PORT_{port}_{}", proto.to_ascii_uppercase());
            env.push(format!("{var}={proto}://{ip}:{port}"));
            env.push(format!("{var}_ADDR={ip}"));
            env.push(format!("{var}_PORT={port}"));
            env.push(format!("{var}_PROTO={proto}"));
        }
        env.push(format!("{alias}_NAME=/{}/{}", self.linking, self.alias));
        for entry in self.env {
            let Some((name, value)) = entry.split_once('=') else {
                continue;
            };
            if NOT_PASSED.contains(&name) {
                continue;
            }
            env.push(format!("{alias}_ENV_{name}={value}"));
        }
        env
    }
}

/// `env` with the link variables added; the container's own variables win
/// over a link's of the same name, as in Docker.
pub fn with_link_env(env: &[String], link_env: &[String]) -> Vec<String> {
    let key = |entry: &str| entry.split('=').next().unwrap_or_default().to_string();
    let own: Vec<String> = env.iter().map(|e| key(e)).collect();
    let mut merged = env.to_vec();
    for entry in link_env {
        let name = key(entry);
        if !own.contains(&name) && !merged.iter().any(|e| key(e) == name) {
            merged.push(entry.clone());
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_give_dockers_variables() {
        let env = [
            "PATH=/usr/bin".to_string(),
            "HOSTNAME=0123456789ab".to_string(),
            "MYSQL_ROOT_PASSWORD=secret".to_string(),
            "HOME=/root".to_string(),
        ];
        let linked = Linked {
            alias: "my-db",
            linking: "web",
            address: Ipv4Addr::new(10, 5, 0, 2),
            ports: vec![
                (8080, "udp".into()),
                (3306, "tcp".into()),
                (8080, "tcp".into()),
            ],
            env: &env,
        };
        assert_eq!(
            linked.env(),
            [
                "MY_DB_PORT=tcp://10.5.0.2:3306",
                "MY_DB_PORT_3306_TCP=tcp://10.5.0.2:3306",
                "MY_DB_PORT_3306_TCP_ADDR=10.5.0.2",
                "MY_DB_PORT_3306_TCP_PORT=3306",
                "MY_DB_PORT_3306_TCP_PROTO=tcp",
                "MY_DB_PORT_8080_TCP=tcp://10.5.0.2:8080",
                "MY_DB_PORT_8080_TCP_ADDR=10.5.0.2",
                "MY_DB_PORT_8080_TCP_PORT=8080",
                "MY_DB_PORT_8080_TCP_PROTO=tcp",
                "MY_DB_PORT_8080_UDP=udp://10.5.0.2:8080",
                "MY_DB_PORT_8080_UDP_ADDR=10.5.0.2",
                "MY_DB_PORT_8080_UDP_PORT=8080",
                "MY_DB_PORT_8080_UDP_PROTO=udp",
                "MY_DB_NAME=/web/my-db",
                "MY_DB_ENV_MYSQL_ROOT_PASSWORD=secret",
            ]
        );
        let bare = Linked {
            alias: "c1",
            linking: "c2",
            address: Ipv4Addr::new(10, 5, 0, 3),
            ports: Vec::new(),
            env: &[],
        };
        assert_eq!(bare.env(), ["C1_NAME=/c2/c1"]);
        assert_eq!(prefix("db.one"), "DB_ONE");
    }

    #[test]
    fn the_containers_own_variables_win() {
        let merged = with_link_env(
            &["PATH=/bin".into(), "DB_NAME=mine".into()],
            &["DB_NAME=/web/db".into(), "DB_PORT=tcp://10.0.0.2:80".into()],
        );
        assert_eq!(
            merged,
            ["PATH=/bin", "DB_NAME=mine", "DB_PORT=tcp://10.0.0.2:80"]
        );
    }
}
