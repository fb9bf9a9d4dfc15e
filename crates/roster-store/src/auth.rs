//! etcd's auth tables: users, roles and their permissions, the enabled flag
//! and the auth revision, with etcd's rules for changing them.
//!
//! The tables live in the store's [`State`](crate::apply::State) behind an
//! `Arc`, so the server can take a consistent copy without holding a lock
//! and rebuild its permission index from it. Changes copy on write (the
//! tables are small next to the keyspace) and are logged as their effects:
//! the users and roles as they are after the change, and what was removed.
//! Every change but enable bumps the auth revision (etcd 3.4 keeps it on
//! enable); none bumps the keyspace revision, as in etcd. Password hashing is the caller's: bcrypt is slow on purpose
//! and must not run under the store's lock.

use crate::record::AuthRec;
use bytes::Bytes;
use roster_api::EtcdError;
use roster_api::authpb::{Permission, Role, User, UserAddOptions};
use std::collections::BTreeMap;

/// The user and role that auth cannot be enabled without.
pub const ROOT: &str = "root";

/// Users, roles, the flag and the revision, as of one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthTables {
    pub enabled: bool,
    /// Bumped by every change; tokens remember the one they were issued at.
    pub revision: u64,
    pub users: BTreeMap<String, User>,
    pub roles: BTreeMap<String, Role>,
}

impl Default for AuthTables {
    fn default() -> Self {
        // A fresh etcd reports auth revision 1.
        AuthTables { enabled: false, revision: 1, users: BTreeMap::new(), roles: BTreeMap::new() }
    }
}

/// One change to the tables, checked against them before anything moves.
#[derive(Debug, Clone)]
pub enum AuthChange {
    Enable,
    Disable,
    /// `password` is the bcrypt hash, empty for a `no_password` user.
    UserAdd {
        name: String,
        password: Bytes,
        no_password: bool,
    },
    UserDelete {
        name: String,
    },
    UserChangePassword {
        name: String,
        password: Bytes,
    },
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        name: String,
        role: String,
    },
    RoleAdd {
        name: String,
    },
    RoleDelete {
        name: String,
    },
    RoleGrantPermission {
        name: String,
        perm: Permission,
    },
    RoleRevokePermission {
        role: String,
        key: Bytes,
        range_end: Bytes,
    },
}

// === impl AuthTables ===

impl AuthTables {
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    pub fn role(&self, name: &str) -> Option<&Role> {
        self.roles.get(name)
    }

    /// Whether `user` holds the root role (and so may do anything).
    pub fn is_root(&self, user: &str) -> bool {
        self.users.get(user).is_some_and(has_root_role)
    }

    /// Applies `c` with etcd's rules. On error nothing changed. Returns the
    /// record to log, or `None` when the change was a no-op etcd ignores
    /// (enable when on, disable when off), which bumps nothing.
    pub(crate) fn apply(&mut self, c: AuthChange) -> Result<Option<AuthRec>, EtcdError> {
        let mut rec = AuthRec::default();
        // etcd 3.4's AuthEnable writes the flag but keeps the revision;
        // every other change bumps it. (A JWT names the revision, so tokens
        // only cross-verify with etcd when the two agree.)
        let bump = !matches!(c, AuthChange::Enable);
        match c {
            AuthChange::Enable => {
                if self.enabled {
                    return Ok(None);
                }
                let root = self.users.get(ROOT).ok_or(EtcdError::RootUserNotExist)?;
                if !has_root_role(root) {
                    return Err(EtcdError::RootRoleNotExist);
                }
                self.enabled = true;
                rec.enabled = Some(true);
            }
            AuthChange::Disable => {
                if !self.enabled {
                    return Ok(None);
                }
                self.enabled = false;
                rec.enabled = Some(false);
            }
            AuthChange::UserAdd { name, password, no_password } => {
                if name.is_empty() {
                    return Err(EtcdError::UserEmpty);
                }
                if self.users.contains_key(&name) {
                    return Err(EtcdError::UserAlreadyExist);
                }
                let user = User {
                    name: Bytes::from(name.clone().into_bytes()),
                    password: if no_password { Bytes::new() } else { password },
                    roles: vec![],
                    options: Some(UserAddOptions { no_password }),
                };
                rec.put_users.push(user.clone());
                self.users.insert(name, user);
            }
            AuthChange::UserDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(EtcdError::InvalidAuthMgmt);
                }
                self.users.remove(&name).ok_or(EtcdError::UserNotFound)?;
                rec.del_users.push(name);
            }
            AuthChange::UserChangePassword { name, password } => {
                let user = self.users.get_mut(&name).ok_or(EtcdError::UserNotFound)?;
                user.password = password;
                rec.put_users.push(user.clone());
            }
            AuthChange::UserGrantRole { user, role } => {
                let u = self.users.get(&user).ok_or(EtcdError::UserNotFound)?;
                // The root role may be granted before it exists, as in etcd.
                if role != ROOT && !self.roles.contains_key(&role) {
                    return Err(EtcdError::RoleNotFound);
                }
                let Err(at) = u.roles.binary_search(&role) else {
                    // Already granted: etcd ignores it, with no revision bump.
                    return Ok(None);
                };
                let u = self.users.get_mut(&user).expect("looked up above");
                u.roles.insert(at, role);
                rec.put_users.push(u.clone());
            }
            AuthChange::UserRevokeRole { name, role } => {
                if self.enabled && name == ROOT && role == ROOT {
                    return Err(EtcdError::InvalidAuthMgmt);
                }
                let u = self.users.get_mut(&name).ok_or(EtcdError::UserNotFound)?;
                let at = u.roles.iter().position(|r| *r == role).ok_or(EtcdError::RoleNotGranted)?;
                u.roles.remove(at);
                rec.put_users.push(u.clone());
            }
            AuthChange::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(EtcdError::RoleEmpty);
                }
                if self.roles.contains_key(&name) {
                    return Err(EtcdError::RoleAlreadyExist);
                }
                let role = Role { name: Bytes::from(name.clone().into_bytes()), key_permission: vec![] };
                rec.put_roles.push(role.clone());
                self.roles.insert(name, role);
            }
            AuthChange::RoleDelete { name } => {
                if self.enabled && name == ROOT {
                    return Err(EtcdError::InvalidAuthMgmt);
                }
                self.roles.remove(&name).ok_or(EtcdError::RoleNotFound)?;
                // The role leaves every user that held it.
                for u in self.users.values_mut() {
                    if let Some(at) = u.roles.iter().position(|r| *r == name) {
                        u.roles.remove(at);
                        rec.put_users.push(u.clone());
                    }
                }
                rec.del_roles.push(name);
            }
            AuthChange::RoleGrantPermission { name, perm } => {
                let role = self.roles.get_mut(&name).ok_or(EtcdError::RoleNotFound)?;
                let perms = &mut role.key_permission;
                // Sorted by key; the same key and range_end is updated in place.
                let at = perms.partition_point(|p| p.key < perm.key);
                match perms[at..].iter().position(|p| p.key == perm.key && p.range_end == perm.range_end) {
                    Some(i) => perms[at + i].perm_type = perm.perm_type,
                    None => perms.insert(at, perm),
                }
                rec.put_roles.push(role.clone());
            }
            AuthChange::RoleRevokePermission { role, key, range_end } => {
                let r = self.roles.get_mut(&role).ok_or(EtcdError::RoleNotFound)?;
                let at = r
                    .key_permission
                    .iter()
                    .position(|p| p.key == key && p.range_end == range_end)
                    .ok_or(EtcdError::PermissionNotGranted)?;
                r.key_permission.remove(at);
                rec.put_roles.push(r.clone());
            }
        }
        if bump {
            self.revision += 1;
        }
        rec.revision = self.revision;
        Ok(Some(rec))
    }

    /// Re-applies a logged change.
    pub(crate) fn replay(&mut self, rec: &AuthRec) {
        for name in &rec.del_users {
            self.users.remove(name);
        }
        for name in &rec.del_roles {
            self.roles.remove(name);
        }
        for u in &rec.put_users {
            self.users.insert(String::from_utf8_lossy(&u.name).into_owned(), u.clone());
        }
        for r in &rec.put_roles {
            self.roles.insert(String::from_utf8_lossy(&r.name).into_owned(), r.clone());
        }
        if let Some(e) = rec.enabled {
            self.enabled = e;
        }
        self.revision = rec.revision;
    }

    /// Everything, as one record (for snapshots).
    pub(crate) fn to_rec(&self) -> AuthRec {
        AuthRec {
            enabled: Some(self.enabled),
            revision: self.revision,
            put_users: self.users.values().cloned().collect(),
            del_users: vec![],
            put_roles: self.roles.values().cloned().collect(),
            del_roles: vec![],
        }
    }

    pub(crate) fn from_rec(rec: &AuthRec) -> Self {
        let mut t = AuthTables::default();
        t.replay(rec);
        t
    }
}

fn has_root_role(u: &User) -> bool {
    u.roles.binary_search_by(|r| r.as_str().cmp(ROOT)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use roster_api::authpb::permission::Type;

    fn add_user(t: &mut AuthTables, name: &str) {
        t.apply(AuthChange::UserAdd { name: name.into(), password: Bytes::from_static(b"h"), no_password: false })
            .unwrap();
    }

    fn perm(key: &str, end: &str, ty: Type) -> Permission {
        Permission { perm_type: ty as i32, key: Bytes::from(key.to_owned()), range_end: Bytes::from(end.to_owned()) }
    }

    #[test]
    fn enable_needs_root_user_with_root_role() {
        let mut t = AuthTables::default();
        assert_eq!(t.apply(AuthChange::Enable), Err(EtcdError::RootUserNotExist));
        add_user(&mut t, ROOT);
        assert_eq!(t.apply(AuthChange::Enable), Err(EtcdError::RootRoleNotExist));
        // etcdctl's recovery: the root role may be granted before it exists.
        t.apply(AuthChange::UserGrantRole { user: ROOT.into(), role: ROOT.into() }).unwrap();
        let before = t.revision;
        assert!(t.apply(AuthChange::Enable).unwrap().is_some());
        assert_eq!(t.revision, before, "etcd 3.4's enable keeps the revision");
        assert_eq!(t.apply(AuthChange::Enable), Ok(None), "enable when on is ignored");
        assert_eq!(t.revision, before);
        assert!(t.apply(AuthChange::Disable).unwrap().is_some());
        assert_eq!(t.revision, before + 1, "disable bumps it");
    }

    #[test]
    fn root_and_its_role_cannot_be_removed_while_enabled() {
        let mut t = AuthTables::default();
        add_user(&mut t, ROOT);
        t.apply(AuthChange::RoleAdd { name: ROOT.into() }).unwrap();
        t.apply(AuthChange::UserGrantRole { user: ROOT.into(), role: ROOT.into() }).unwrap();
        t.apply(AuthChange::Enable).unwrap();
        assert_eq!(t.apply(AuthChange::UserDelete { name: ROOT.into() }), Err(EtcdError::InvalidAuthMgmt));
        assert_eq!(t.apply(AuthChange::RoleDelete { name: ROOT.into() }), Err(EtcdError::InvalidAuthMgmt));
        assert_eq!(
            t.apply(AuthChange::UserRevokeRole { name: ROOT.into(), role: ROOT.into() }),
            Err(EtcdError::InvalidAuthMgmt)
        );
        t.apply(AuthChange::Disable).unwrap();
        t.apply(AuthChange::UserDelete { name: ROOT.into() }).unwrap();
    }

    #[test]
    fn duplicates_and_missing_names_have_etcds_errors() {
        let mut t = AuthTables::default();
        add_user(&mut t, "a");
        let dup = AuthChange::UserAdd { name: "a".into(), password: Bytes::new(), no_password: false };
        assert_eq!(t.apply(dup), Err(EtcdError::UserAlreadyExist));
        let empty = AuthChange::UserAdd { name: String::new(), password: Bytes::new(), no_password: false };
        assert_eq!(t.apply(empty), Err(EtcdError::UserEmpty));
        assert_eq!(t.apply(AuthChange::RoleAdd { name: String::new() }), Err(EtcdError::RoleEmpty));
        t.apply(AuthChange::RoleAdd { name: "r".into() }).unwrap();
        assert_eq!(t.apply(AuthChange::RoleAdd { name: "r".into() }), Err(EtcdError::RoleAlreadyExist));
        assert_eq!(
            t.apply(AuthChange::UserGrantRole { user: "a".into(), role: "x".into() }),
            Err(EtcdError::RoleNotFound)
        );
        assert_eq!(
            t.apply(AuthChange::UserGrantRole { user: "b".into(), role: "r".into() }),
            Err(EtcdError::UserNotFound)
        );
        assert_eq!(
            t.apply(AuthChange::UserRevokeRole { name: "a".into(), role: "r".into() }),
            Err(EtcdError::RoleNotGranted)
        );
        let revoke = AuthChange::RoleRevokePermission {
            role: "r".into(),
            key: Bytes::from_static(b"k"),
            range_end: Bytes::new(),
        };
        assert_eq!(t.apply(revoke), Err(EtcdError::PermissionNotGranted));
    }

    #[test]
    fn grants_stay_sorted_and_update_in_place() {
        let mut t = AuthTables::default();
        t.apply(AuthChange::RoleAdd { name: "r".into() }).unwrap();
        for p in [perm("b", "", Type::Read), perm("a", "c", Type::Write), perm("b", "", Type::Readwrite)] {
            t.apply(AuthChange::RoleGrantPermission { name: "r".into(), perm: p }).unwrap();
        }
        assert_eq!(
            t.role("r").unwrap().key_permission,
            vec![perm("a", "c", Type::Write), perm("b", "", Type::Readwrite)]
        );
    }

    #[test]
    fn deleting_a_role_takes_it_from_every_user_and_replays_exactly() {
        let mut t = AuthTables::default();
        let mut replayed = AuthTables::default();
        let mut log = vec![];
        let mut run = |t: &mut AuthTables, c| log.extend(t.apply(c).unwrap());
        run(&mut t, AuthChange::RoleAdd { name: "r".into() });
        for u in ["a", "b"] {
            run(&mut t, AuthChange::UserAdd { name: u.into(), password: Bytes::from_static(b"h"), no_password: false });
            run(&mut t, AuthChange::UserGrantRole { user: u.into(), role: "r".into() });
        }
        run(&mut t, AuthChange::RoleDelete { name: "r".into() });
        assert!(t.users.values().all(|u| u.roles.is_empty()));
        for r in &log {
            replayed.replay(r);
        }
        assert_eq!(replayed, t);
        assert_eq!(AuthTables::from_rec(&t.to_rec()), t);
    }
}
