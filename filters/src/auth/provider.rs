//! Provider users (SPEC §13): their tokens, verified through the engine's [`TokenAuthority`],
//! and the store keys of users only the store's directory knows.
//!
//! [`TokenAuthority`]: super::TokenAuthority

use std::sync::Arc;

use super::{
    store_key_entry, AuthFilter, KeyEntry, Lineage, ResolvedUser, StoreKey, TokenRefusal,
    INVALID_MESSAGE,
};
use crate::{Identity, Reply};

impl AuthFilter {
    /// A store key of a provider user (no `[[users]]` entry): its identity from the org and
    /// role the directory recorded at the user's last sign-in or token.
    pub(super) fn directory_key_entry(&self, k: &StoreKey, line: Lineage) -> Option<KeyEntry> {
        let users = self.store_users.table();
        let u = users.get(&k.user)?;
        let (org, role) = (u.org.as_deref()?, u.role.as_deref()?);
        let r = self.roles.get(role)?;
        let owner = ResolvedUser {
            org: Arc::from(org),
            role: r.role.clone(),
            permissions: r.permissions.clone(),
            models: r.models.clone(),
            agents: r.agents.clone(),
        };
        Some(store_key_entry(k, owner, line))
    }

    /// Verifies a provider token through the engine's [`TokenAuthority`].
    pub(super) async fn authenticate_token(
        &self,
        token: &str,
        request_id: &str,
    ) -> Result<Identity, Reply> {
        let refuse = |this: &Self, message: String| {
            this.invalid.inc();
            Reply::error(401, "invalid_api_key", &message)
        };
        let Some(authority) = self.authority.get() else {
            tracing::debug!(
                request_id,
                "refused: a JWT, but no [identity] is configured"
            );
            return Err(refuse(self, INVALID_MESSAGE.to_string()));
        };
        let user = match authority.authenticate(token).await {
            Ok(u) => u,
            Err(TokenRefusal::Invalid(message)) => {
                tracing::debug!(request_id, "refused: provider token");
                return Err(refuse(self, message));
            }
            Err(TokenRefusal::NoRole(message)) => {
                return Err(Reply::error(403, "permission_denied", &message));
            }
        };
        if self.store_users.is_disabled(&user.name) {
            tracing::debug!(request_id, "refused: provider token of a disabled user");
            return Err(refuse(
                self,
                "The access token was refused: its user is disabled in this gateway's \
                 directory; ask your administrator."
                    .to_string(),
            ));
        }
        let Some(r) = self.roles.get(&*user.role) else {
            return Err(Reply::error(
                403,
                "permission_denied",
                "Your identity provider's groups map to a role this gateway no longer has.",
            ));
        };
        Ok(Identity {
            key_id: Arc::from(format!("jwt:{}", user.name)),
            user: user.name,
            org: user.org,
            role: r.role.clone(),
            grants: r.token.clone(),
            ancestors: Arc::from([]),
        })
    }
}
