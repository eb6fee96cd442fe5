//! The subnet file, in flannel's format, for tooling that sources it
//! (Docker's `--bip=${FLANNEL_SUBNET}`, CNI's flannel plugin, scripts).

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use ipnetwork::Ipv4Network;

/// What the subnet file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetFile {
    pub network: Ipv4Network,
    pub subnet: Ipv4Network,
    pub mtu: u32,
    pub ip_masq: bool,
}

impl SubnetFile {
    pub fn render(&self) -> String {
        format!(
            "FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}\nFLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n",
            self.network,
            tartan_ipam::gateway_cidr(&self.subnet),
            self.mtu,
            self.ip_masq
        )
    }

    /// Writes the file atomically: readers see the old file or the new one, never half of one.
    pub fn write(&self, path: &Path) -> Result<()> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(".{file_name}.tmp"));
        let mut file =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        file.write_all(self.render().as_bytes())
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        Ok(())
    }
}

/// The subnet a previous run wrote, if the file exists and names one.
pub fn previous_subnet(path: &Path) -> Option<Ipv4Network> {
    let text = std::fs::read_to_string(path).ok()?;
    parse_previous_subnet(&text)
}

fn parse_previous_subnet(text: &str) -> Option<Ipv4Network> {
    let value = text
        .lines()
        .find_map(|line| line.trim().strip_prefix("FLANNEL_SUBNET="))?;
    let with_gateway: Ipv4Network = value.trim().parse().ok()?;
    Ipv4Network::new(with_gateway.network(), with_gateway.prefix()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_flannel_variables_and_reads_them_back() {
        let file = SubnetFile {
            network: "10.5.0.0/16".parse().expect("cidr"),
            subnet: "10.5.34.0/24".parse().expect("cidr"),
            mtu: 1450,
            ip_masq: false,
        };
        assert_eq!(
            file.render(),
            "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.34.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run/subnet.env");
        file.write(&path).expect("write");
        assert_eq!(
            previous_subnet(&path),
            Some("10.5.34.0/24".parse().expect("cidr"))
        );
        let names: Vec<_> = std::fs::read_dir(path.parent().expect("parent"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temp file left behind: {names:?}");
    }

    #[test]
    fn garbage_names_no_previous_subnet() {
        assert_eq!(parse_previous_subnet("FLANNEL_SUBNET=banana\n"), None);
        assert_eq!(parse_previous_subnet(""), None);
        assert_eq!(parse_previous_subnet("FLANNEL_NETWORK=10.0.0.0/8\n"), None);
    }
}
