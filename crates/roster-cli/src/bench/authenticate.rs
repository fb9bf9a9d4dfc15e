//! `authenticate`: Authenticate calls in a closed loop, as `--user`. Each
//! one checks the password with bcrypt at the server's cost, so this
//! measures how many logins a server runs side by side; etcd runs them one
//! at a time (etcd#11826).

use super::driver::closed_loop_on;
use super::report::Outcome;
use super::target::Target;
use super::wire::AUTHENTICATE;
use super::{Load, Workload};
use anyhow::{Context, Result};
use clap::Args;
use roster_api::etcdserverpb::{AuthenticateRequest, AuthenticateResponse};
use std::time::Duration;

#[derive(Debug, Clone, Args)]
#[group(skip)]
pub struct Authenticate {
    #[command(flatten)]
    pub load: Load,
}

impl Workload for Authenticate {
    fn name(&self) -> String {
        format!("authenticate {}x{}", self.load.conns, self.load.clients)
    }

    async fn run(&self, t: &Target, max: Duration) -> Result<Outcome> {
        let (name, password) = t.user.clone().context("authenticate needs --user NAME:PASSWORD")?;
        let req = AuthenticateRequest { name, password };
        // Logins need no token: plain connections.
        let conns = t.connect_unary_anonymous(self.load.conns).await?;
        closed_loop_on("authenticate", t, conns, &self.load, max, move |conn, _| {
            let req = req.clone();
            async move { conn.call::<_, AuthenticateResponse>(AUTHENTICATE, &req).await.map(drop) }
        })
        .await
    }
}
