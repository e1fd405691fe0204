//! Who may do what: the roles every route and session is checked against.

use kisara_core::model::ContainerInfo;
use kisara_core::{Error, Identity, Result, roles};

/// May do everything.
pub const ADMIN_ROLE: &str = roles::ADMIN;
/// A platform (a CTF front end, a lab portal): launches and manages
/// containers and opens sessions on any of them.
pub const PLATFORM_ROLE: &str = roles::PLATFORM;
/// A player: opens sessions on the containers of its own team (the owner
/// label equals [`Identity::team`], or the user name when it has no team),
/// and nothing else.
pub const PLAYER_ROLE: &str = roles::PLAYER;

/// What a caller asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read the cluster's state: nodes, containers, networks, images.
    Read,
    /// Launch, stop, remove; networks and images.
    Manage,
    /// Read recordings and audit events of every session.
    Audit,
}

impl Action {
    fn describe(self) -> &'static str {
        match self {
            Self::Read => "read the cluster's state",
            Self::Manage => "manage containers, networks and images",
            Self::Audit => "read recordings and audit events",
        }
    }
}

/// Whether `identity` may do `action`; a [`Error::PermissionDenied`] naming
/// the user, the action and the roles that may, when not.
pub fn authorize(identity: &Identity, action: Action) -> Result<()> {
    let allowed = match action {
        Action::Read | Action::Manage => {
            identity.has_role(ADMIN_ROLE) || identity.has_role(PLATFORM_ROLE)
        }
        Action::Audit => identity.has_role(ADMIN_ROLE),
    };
    if allowed {
        return Ok(());
    }
    let roles = match action {
        Action::Read | Action::Manage => "admin or platform",
        Action::Audit => "admin",
    };
    Err(Error::permission_denied(format!(
        "user {:?} may not {}: that needs the {roles} role",
        identity.username,
        action.describe()
    )))
}

/// The team whose containers a player reaches.
pub fn team_of(identity: &Identity) -> &str {
    identity.team().unwrap_or(&identity.username)
}

/// Whether `identity` may open a session on `container`: admins and
/// platforms on any, players on their team's only.
pub fn authorize_session(identity: &Identity, container: &ContainerInfo) -> Result<()> {
    if identity.has_role(ADMIN_ROLE) || identity.has_role(PLATFORM_ROLE) {
        return Ok(());
    }
    if !identity.has_role(PLAYER_ROLE) {
        return Err(Error::permission_denied(format!(
            "user {:?} may not open sessions: that needs the admin, platform or player role",
            identity.username
        )));
    }
    let team = team_of(identity);
    if container.owner() == Some(team) {
        return Ok(());
    }
    Err(Error::permission_denied(format!(
        "user {:?} of team {team:?} may not open a session on container {}: it belongs to another owner",
        identity.username, container.id
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kisara_core::model::{ContainerId, ContainerState, Timestamp, labels};

    fn container(owner: Option<&str>) -> ContainerInfo {
        ContainerInfo {
            id: ContainerId::new("c1"),
            name: "c1".into(),
            image: "busybox".into(),
            state: ContainerState::Running,
            exit_code: None,
            oom_killed: false,
            labels: owner
                .map(|o| (labels::OWNER.to_owned(), o.to_owned()))
                .into_iter()
                .collect(),
            networks: Default::default(),
            ports: Vec::new(),
            created_at: Timestamp::now(),
        }
    }

    #[test]
    fn roles_decide() {
        let admin = Identity::new("root").with_role(ADMIN_ROLE);
        let platform = Identity::new("ctf").with_role(PLATFORM_ROLE);
        let player = Identity::new("alice")
            .with_role(PLAYER_ROLE)
            .with_team("red");
        let nobody = Identity::new("eve");
        for action in [Action::Read, Action::Manage, Action::Audit] {
            assert!(authorize(&admin, action).is_ok());
            assert!(authorize(&player, action).is_err());
            assert!(authorize(&nobody, action).is_err());
        }
        assert!(authorize(&platform, Action::Manage).is_ok());
        let denied = authorize(&platform, Action::Audit).unwrap_err().to_string();
        assert!(
            denied.contains("\"ctf\"") && denied.contains("admin role"),
            "{denied}"
        );

        assert!(authorize_session(&admin, &container(None)).is_ok());
        assert!(authorize_session(&platform, &container(Some("blue"))).is_ok());
        assert!(authorize_session(&player, &container(Some("red"))).is_ok());
        let foreign = authorize_session(&player, &container(Some("blue")))
            .unwrap_err()
            .to_string();
        assert!(foreign.contains("another owner"), "{foreign}");
        assert!(authorize_session(&player, &container(None)).is_err());
        assert!(authorize_session(&nobody, &container(Some("eve"))).is_err());
        // Without a team, a player's team is its user name.
        let solo = Identity::new("bob").with_role(PLAYER_ROLE);
        assert!(authorize_session(&solo, &container(Some("bob"))).is_ok());
    }
}
