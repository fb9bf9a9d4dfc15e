//! `roster auth`: etcd's user, role and auth steps, plus `grant-service`,
//! a credential that may register one service only.
//!
//! Talks to the Auth service directly (roster serve or etcd). With `--user`
//! (or `ROSTER_USER`) it authenticates first and sends the token with every
//! call, as etcdctl does.

use crate::registry_cmd::ConnectArgs;
use anyhow::{Context, Result, bail};
use rand::Rng;
use roster_api::authpb::{Permission, UserAddOptions, permission::Type};
use roster_api::etcdserverpb::{auth_client::AuthClient, *};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  roster auth enable                         # prints root's new password once
  roster auth --user root:PW user add alice:secret
  roster auth --user root:PW role grant-permission app readwrite /app/ --prefix
  roster auth --user root:PW grant-service hello hello-svc")]
pub struct AuthArgs {
    #[command(subcommand)]
    command: AuthCommand,
    /// Where, and as whom (`--user`, root for most commands).
    #[command(flatten)]
    conn: ConnectArgs,
}

#[derive(Debug, clap::Subcommand)]
enum AuthCommand {
    /// Create root (with a generated password, printed once) and its role if
    /// missing, then turn auth on.
    Enable,
    /// Turn auth off.
    Disable,
    /// Whether auth is on, and the auth revision.
    Status,
    #[command(subcommand)]
    User(UserCommand),
    #[command(subcommand)]
    Role(RoleCommand),
    /// A role that may write only `<prefix>/<service>/` and read
    /// `<prefix>/` (what discovery lists), granted to `<user>`; the user is
    /// created, with a generated password printed once, if missing.
    GrantService {
        service: String,
        #[arg(value_name = "USER")]
        account: String,
        /// The registry's key prefix.
        #[arg(long, default_value = roster::DEFAULT_PREFIX)]
        prefix: String,
    },
}

#[derive(Debug, clap::Subcommand)]
enum UserCommand {
    /// Add `name:password`, or `name` with --no-password.
    Add {
        #[arg(value_name = "NAME[:PASSWORD]")]
        account: String,
        #[arg(long)]
        no_password: bool,
    },
    Get {
        name: String,
    },
    List,
    Delete {
        name: String,
    },
    /// Set `name`'s password.
    Passwd {
        name: String,
        password: String,
    },
    GrantRole {
        name: String,
        role: String,
    },
    RevokeRole {
        name: String,
        role: String,
    },
}

#[derive(Debug, clap::Subcommand)]
enum RoleCommand {
    Add {
        name: String,
    },
    Get {
        name: String,
    },
    List,
    Delete {
        name: String,
    },
    /// Grant read, write or readwrite on a key, a [key, range_end) range, or
    /// (with --prefix) every key under key.
    GrantPermission {
        name: String,
        #[arg(value_parser = parse_type)]
        perm: Type,
        key: String,
        range_end: Option<String>,
        #[arg(long, conflicts_with = "range_end")]
        prefix: bool,
    },
    RevokePermission {
        name: String,
        key: String,
        range_end: Option<String>,
        #[arg(long, conflicts_with = "range_end")]
        prefix: bool,
    },
}

fn parse_type(s: &str) -> Result<Type, String> {
    match s.to_ascii_lowercase().as_str() {
        "read" => Ok(Type::Read),
        "write" => Ok(Type::Write),
        "readwrite" => Ok(Type::Readwrite),
        _ => Err(format!("{s:?}: expected read, write or readwrite")),
    }
}

type Token = Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;
type Auth = AuthClient<InterceptedService<Channel, Token>>;

/// The channel to the first endpoint, authenticated as `user` if given. The
/// one place the CLI turns `--user` into a token.
pub(crate) async fn auth_channel(
    conn: &ConnectArgs,
    creds: Option<&roster::client::Credentials>,
) -> Result<(Channel, Option<String>)> {
    let first = conn.endpoints.split(',').next().unwrap_or_default().trim();
    let url = if first.contains("://") { first.to_owned() } else { format!("http://{first}") };
    let channel = Channel::from_shared(url.clone())
        .with_context(|| format!("bad endpoint {first:?}"))?
        .timeout(std::time::Duration::from_secs(conn.timeout.max(1)))
        .connect()
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    let Some(c) = creds else {
        return Ok((channel, None));
    };
    let (name, password) = (c.user.clone(), c.password().to_owned());
    let resp = AuthClient::new(channel.clone())
        .authenticate(AuthenticateRequest { name, password })
        .await
        .map_err(status)
        .context("cannot authenticate")?;
    Ok((channel, Some(resp.into_inner().token)))
}

fn client(channel: Channel, token: Option<String>) -> Auth {
    let value = token.and_then(|t| t.parse::<tonic::metadata::MetadataValue<_>>().ok());
    let attach: Token = Box::new(move |mut req: tonic::Request<()>| {
        if let Some(v) = &value {
            req.metadata_mut().insert("token", v.clone());
        }
        Ok(req)
    });
    AuthClient::with_interceptor(channel, attach)
}

/// The server's error text, as etcdctl prints it.
fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", s.message())
}

fn generated_password() -> String {
    let mut rng = rand::rng();
    (0..24).map(|_| rng.sample(rand::distr::Alphanumeric) as char).collect()
}

fn prefix_end(key: &str) -> Vec<u8> {
    roster_api::range::prefix_end(key.as_bytes())
}

fn range_end(key: &str, end: Option<String>, prefix: bool) -> Vec<u8> {
    match (end, prefix) {
        (_, true) => prefix_end(key),
        (Some(e), false) => e.into_bytes(),
        (None, false) => vec![],
    }
}

/// Adds `name`; returns whether it was new.
async fn ensure_user(c: &mut Auth, name: &str, password: &str) -> Result<bool> {
    let req = AuthUserAddRequest { name: name.into(), password: password.into(), ..Default::default() };
    match c.user_add(req).await {
        Ok(_) => Ok(true),
        Err(s) if s.message() == roster_api::EtcdError::UserAlreadyExist.to_string() => Ok(false),
        Err(s) => Err(status(s)).with_context(|| format!("cannot add user {name}")),
    }
}

async fn ensure_role(c: &mut Auth, name: &str) -> Result<()> {
    match c.role_add(AuthRoleAddRequest { name: name.into() }).await {
        Ok(_) => Ok(()),
        Err(s) if s.message() == roster_api::EtcdError::RoleAlreadyExist.to_string() => Ok(()),
        Err(s) => Err(status(s)).with_context(|| format!("cannot add role {name}")),
    }
}

async fn grant(c: &mut Auth, role: &str, perm: Type, key: &[u8], range_end: Vec<u8>) -> Result<()> {
    let perm = Permission { perm_type: perm as i32, key: key.to_vec().into(), range_end: range_end.into() };
    c.role_grant_permission(AuthRoleGrantPermissionRequest { name: role.into(), perm: Some(perm) })
        .await
        .map_err(status)?;
    Ok(())
}

fn perm_name(p: &Permission) -> &'static str {
    match Type::try_from(p.perm_type) {
        Ok(Type::Write) => "write",
        Ok(Type::Readwrite) => "readwrite",
        _ => "read",
    }
}

pub async fn run(args: AuthArgs) -> Result<()> {
    let creds = args.conn.client_config()?.credentials;
    let (channel, token) = auth_channel(&args.conn, creds.as_ref()).await?;
    let mut c = client(channel, token);
    match args.command {
        AuthCommand::Enable => {
            let password = generated_password();
            let created = ensure_user(&mut c, "root", &password).await?;
            ensure_role(&mut c, "root").await?;
            let req = AuthUserGrantRoleRequest { user: "root".into(), role: "root".into() };
            c.user_grant_role(req).await.map_err(status).context("cannot grant root its role")?;
            c.auth_enable(AuthEnableRequest {}).await.map_err(status).context("cannot enable auth")?;
            if created {
                println!("Created user root with password {password}");
                println!("It is shown only now: keep it safe.");
            }
            println!("Authentication Enabled");
        }
        AuthCommand::Disable => {
            c.auth_disable(AuthDisableRequest {}).await.map_err(status)?;
            println!("Authentication Disabled");
        }
        AuthCommand::Status => {
            let s = c.auth_status(AuthStatusRequest {}).await.map_err(status)?.into_inner();
            println!("Authentication Status: {}", s.enabled);
            println!("AuthRevision: {}", s.auth_revision);
        }
        AuthCommand::User(u) => user(&mut c, u).await?,
        AuthCommand::Role(r) => role(&mut c, r).await?,
        AuthCommand::GrantService { service, account: user, prefix } => {
            if service.is_empty() || service.contains('/') {
                bail!("service name {service:?} must be non-empty and hold no '/'");
            }
            let root = prefix.trim_end_matches('/');
            let own = format!("{root}/{service}/");
            let role = format!("service-{service}");
            ensure_role(&mut c, &role).await?;
            grant(&mut c, &role, Type::Readwrite, own.as_bytes(), prefix_end(&own)).await?;
            let all = format!("{root}/");
            grant(&mut c, &role, Type::Read, all.as_bytes(), prefix_end(&all)).await?;
            let password = generated_password();
            if ensure_user(&mut c, &user, &password).await? {
                println!("Created user {user} with password {password}");
                println!("It is shown only now: keep it safe.");
            }
            c.user_grant_role(AuthUserGrantRoleRequest { user: user.clone(), role: role.clone() })
                .await
                .map_err(status)?;
            println!("User {user} may register {service} under {own} and read {all} (role {role})");
        }
    }
    Ok(())
}

async fn user(c: &mut Auth, cmd: UserCommand) -> Result<()> {
    match cmd {
        UserCommand::Add { account: user, no_password } => {
            let (name, password) = match user.split_once(':') {
                Some((n, p)) => (n.to_owned(), p.to_owned()),
                None if no_password => (user.clone(), String::new()),
                None => bail!("give name:password, or --no-password"),
            };
            let options = Some(UserAddOptions { no_password });
            c.user_add(AuthUserAddRequest { name: name.clone(), password, options, ..Default::default() })
                .await
                .map_err(status)?;
            println!("User {name} created");
        }
        UserCommand::Get { name } => {
            let r = c.user_get(AuthUserGetRequest { name: name.clone() }).await.map_err(status)?.into_inner();
            println!("User: {name}");
            println!("Roles: {}", r.roles.join(" "));
        }
        UserCommand::List => {
            for u in c.user_list(AuthUserListRequest {}).await.map_err(status)?.into_inner().users {
                println!("{u}");
            }
        }
        UserCommand::Delete { name } => {
            c.user_delete(AuthUserDeleteRequest { name: name.clone() }).await.map_err(status)?;
            println!("User {name} deleted");
        }
        UserCommand::Passwd { name, password } => {
            let req = AuthUserChangePasswordRequest { name, password, ..Default::default() };
            c.user_change_password(req).await.map_err(status)?;
            println!("Password updated");
        }
        UserCommand::GrantRole { name, role } => {
            c.user_grant_role(AuthUserGrantRoleRequest { user: name.clone(), role: role.clone() })
                .await
                .map_err(status)?;
            println!("Role {role} is granted to user {name}");
        }
        UserCommand::RevokeRole { name, role } => {
            c.user_revoke_role(AuthUserRevokeRoleRequest { name: name.clone(), role: role.clone() })
                .await
                .map_err(status)?;
            println!("Role {role} is revoked from user {name}");
        }
    }
    Ok(())
}

async fn role(c: &mut Auth, cmd: RoleCommand) -> Result<()> {
    match cmd {
        RoleCommand::Add { name } => {
            c.role_add(AuthRoleAddRequest { name: name.clone() }).await.map_err(status)?;
            println!("Role {name} created");
        }
        RoleCommand::Get { name } => {
            let r = c.role_get(AuthRoleGetRequest { role: name.clone() }).await.map_err(status)?.into_inner();
            println!("Role {name}");
            for p in &r.perm {
                let key = String::from_utf8_lossy(&p.key);
                match &p.range_end[..] {
                    [] => println!("{}: {key}", perm_name(p)),
                    end => println!("{}: [{key}, {})", perm_name(p), String::from_utf8_lossy(end)),
                }
            }
        }
        RoleCommand::List => {
            for r in c.role_list(AuthRoleListRequest {}).await.map_err(status)?.into_inner().roles {
                println!("{r}");
            }
        }
        RoleCommand::Delete { name } => {
            c.role_delete(AuthRoleDeleteRequest { role: name.clone() }).await.map_err(status)?;
            println!("Role {name} deleted");
        }
        RoleCommand::GrantPermission { name, perm, key, range_end: end, prefix } => {
            grant(c, &name, perm, key.as_bytes(), range_end(&key, end, prefix)).await?;
            println!("Role {name} updated");
        }
        RoleCommand::RevokePermission { name, key, range_end: end, prefix } => {
            let range_end = range_end(&key, end, prefix);
            let req = AuthRoleRevokePermissionRequest {
                role: name.clone(),
                key: key.into_bytes().into(),
                range_end: range_end.into(),
            };
            c.role_revoke_permission(req).await.map_err(status)?;
            println!("Permission of role {name} is updated");
        }
    }
    Ok(())
}
