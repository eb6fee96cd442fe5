//! The user a container's command runs as: `-u`/`--user` or the image's
//! `User`, resolved in the container's own `/etc/passwd` and `/etc/group`
//! with the rules of Docker (runc's `GetExecUser`).

use crate::{Result, RuntimeError};

/// Who the command runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: those of `/etc/group` that list the user,
    /// when no group was named.
    pub groups: Vec<u32>,
    /// The passwd entry's home, `/` without one (HOME unless the environment sets it).
    pub home: String,
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if line.starts_with('#') || fields.len() < 6 {
            return None;
        }
        Some(PasswdEntry {
            name: fields[0],
            uid: fields[2].parse().ok()?,
            gid: fields[3].parse().ok()?,
            home: fields[5],
        })
    })
}

/// `(name, gid, members)` of each well-formed line.
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if line.starts_with('#') || fields.len() < 3 {
            return None;
        }
        let members = fields
            .get(3)
            .map(|m| m.split(',').filter(|m| !m.is_empty()).collect())
            .unwrap_or_default();
        Some((fields[0], fields[2].parse().ok()?, members))
    })
}

fn not_found(what: &str, name: &str, file: &str) -> RuntimeError {
    RuntimeError::Security(format!(
        "unable to find {what} {name}: no matching entries in {file} file"
    ))
}

/// Resolves `user` (`name`, `uid`, `name:group`, `uid:gid`, any mix) against
/// the contents of the container's passwd and group files. A numeric uid
/// needs no entry (then gid 0 and home `/`, as Docker); a name does.
pub fn resolve(user: &str, passwd: &str, group: &str) -> Result<Identity> {
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    if user_part.is_empty() {
        return Err(RuntimeError::Security(format!("invalid user {user:?}")));
    }
    let numeric = user_part.parse::<u32>().ok();
    let entry = passwd_entries(passwd).find(|e| match numeric {
        Some(uid) => e.uid == uid,
        None => e.name == user_part,
    });
    let mut identity = match (&entry, numeric) {
        (Some(e), _) => Identity {
            uid: e.uid,
            gid: e.gid,
            groups: Vec::new(),
            home: e.home.to_string(),
        },
        (None, Some(uid)) => Identity {
            uid,
            gid: 0,
            groups: Vec::new(),
            home: "/".into(),
        },
        (None, None) => return Err(not_found("user", user_part, "passwd")),
    };
    match group_part {
        Some("") => return Err(RuntimeError::Security(format!("invalid user {user:?}"))),
        Some(name) => {
            identity.gid = match name.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => group_entries(group)
                    .find(|(n, _, _)| *n == name)
                    .map(|(_, gid, _)| gid)
                    .ok_or_else(|| not_found("group", name, "group"))?,
            };
        }
        None => {
            if let Some(e) = &entry {
                identity.groups = group_entries(group)
                    .filter(|(_, _, members)| members.contains(&e.name))
                    .map(|(_, gid, _)| gid)
                    .collect();
            }
        }
    }
    if identity.home.is_empty() {
        identity.home = "/".into();
    }
    Ok(identity)
}

/// Reads the container's files (run inside its root) and resolves `user`;
/// a missing file has no entries.
pub fn resolve_in_root(user: &str) -> Result<Identity> {
    let read = |path: &str| match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(RuntimeError::Io {
            op: "container init: reading",
            path: path.into(),
            source,
        }),
    };
    resolve(user, &read("/etc/passwd")?, &read("/etc/group")?)
}

/// Becomes `identity`: groups first, then gid, then uid. Leaving uid 0
/// clears the capabilities' effective and permitted sets, as Docker gives
/// a non-root user none.
pub fn switch_to(identity: &Identity) -> Result<()> {
    let fail = |what: &str| {
        RuntimeError::Security(format!(
            "container init: switching to uid {} gid {} ({what}): {}",
            identity.uid,
            identity.gid,
            std::io::Error::last_os_error()
        ))
    };
    let groups: Vec<libc::gid_t> = identity.groups.clone();
    // SAFETY: a valid array of `groups.len()` gids.
    if unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } != 0 {
        return Err(fail("setgroups"));
    }
    // SAFETY: plain integer arguments.
    if unsafe { libc::setresgid(identity.gid, identity.gid, identity.gid) } != 0 {
        return Err(fail("setresgid"));
    }
    // SAFETY: plain integer arguments.
    if unsafe { libc::setresuid(identity.uid, identity.uid, identity.uid) } != 0 {
        return Err(fail("setresuid"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:App:/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\napp:x:1000:\nstaff:x:50:app,other\naudio:x:63:app\n";

    #[test]
    fn users_resolve_as_docker_resolves_them() {
        let app = resolve("app", PASSWD, GROUP).expect("app");
        assert_eq!(
            (app.uid, app.gid, app.home.as_str()),
            (1000, 1000, "/home/app")
        );
        assert_eq!(app.groups, [50, 63]);
        let by_uid = resolve("1000", PASSWD, GROUP).expect("uid");
        assert_eq!(
            (by_uid.uid, by_uid.gid, by_uid.groups.len()),
            (1000, 1000, 2)
        );
        let with_group = resolve("app:staff", PASSWD, GROUP).expect("app:staff");
        assert_eq!((with_group.gid, with_group.groups.len()), (50, 0));
        let unknown = resolve("4242:4343", PASSWD, GROUP).expect("numeric");
        assert_eq!(
            (unknown.uid, unknown.gid, unknown.home.as_str()),
            (4242, 4343, "/")
        );
        assert_eq!(resolve("4242", "", "").expect("no files").gid, 0);
        assert_eq!(
            resolve("nobody", PASSWD, GROUP)
                .expect_err("unknown")
                .to_string(),
            "unable to find user nobody: no matching entries in passwd file"
        );
        assert_eq!(
            resolve("app:wheel", PASSWD, GROUP)
                .expect_err("unknown")
                .to_string(),
            "unable to find group wheel: no matching entries in group file"
        );
        assert!(resolve(":1", PASSWD, GROUP).is_err());
    }
}
