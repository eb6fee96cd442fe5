//! A throw-away certificate authority for TLS tests, made with the openssl CLI.
//! The server certificate is also good for client auth: etcd dials itself with it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::prereq;

/// A CA, a server certificate for 127.0.0.1 and a client certificate.
#[derive(Debug, Clone)]
pub struct TestPki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl")?;
    if !out.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl TestPki {
    pub fn generate(dir: &Path) -> Result<TestPki> {
        prereq::require_binary("openssl")?;
        let key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca_args = vec!["req", "-x509", "-days", "1", "-subj", "/CN=tartan-test-ca"];
        ca_args.extend(key);
        ca_args.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(dir, &ca_args)?;
        for (name, usage) in [
            ("server", "serverAuth,clientAuth"),
            ("client", "clientAuth"),
        ] {
            let key_file = format!("{name}.key");
            let csr = format!("{name}.csr");
            let subject = format!("/CN=tartan-test-{name}");
            let mut req = vec![
                "req",
                "-subj",
                subject.as_str(),
                "-keyout",
                key_file.as_str(),
                "-out",
                csr.as_str(),
            ];
            req.extend(key);
            openssl(dir, &req)?;
            let ext = format!("{name}.ext");
            std::fs::write(
                dir.join(&ext),
                format!("subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n"),
            )?;
            let cert = format!("{name}.pem");
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-days",
                    "1",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-extfile",
                    &ext,
                    "-out",
                    &cert,
                ],
            )?;
        }
        Ok(TestPki {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        })
    }
}
