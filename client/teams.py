"""Teams, their members, users and invitations."""

from __future__ import annotations

from datetime import datetime

from client.base import BaseClient, Out


class TeamRef(Out):
    id: int
    name: str
    role: str = "member"


class Member(Out):
    user_id: int
    username: str
    role: str = "member"


class UserAccount(Out):
    id: int
    username: str
    is_superuser: bool = False
    team_id: int | None = None
    role: str = "member"
    created_at: datetime | None = None


class Invitation(Out):
    id: int
    team_id: int
    team_name: str = ""
    username: str
    role: str = "member"
    status: str = "pending"
    invited_by: str = ""
    created_at: datetime | None = None
    answered_at: datetime | None = None


class TeamsApi(BaseClient):
    """`/teams`, `/users`, `/invitations`."""

    def teams(self) -> list[TeamRef]:
        """The teams you belong to, with your role in each."""
        return [TeamRef.model_validate(t) for t in self._json("GET", "/teams")]

    def team(self, team_id: int) -> TeamRef:
        return TeamRef.model_validate(self._json("GET", f"/teams/{team_id}"))

    def create_team(self, name: str) -> TeamRef:
        """A new team with you as its owner; switch to it with `use_team(team.id)` (studio
        administrators, or everyone when the server sets DS_TEAM_CREATORS=everyone)."""
        return TeamRef.model_validate(self._json("POST", "/teams", json={"name": name}))

    def team_members(self, team_id: int) -> list[Member]:
        """Members of one of your teams, with their roles."""
        return [Member.model_validate(m) for m in self._json("GET", f"/teams/{team_id}/members")]

    def add_member(self, team_id: int, username: str, role: str = "member") -> Member:
        """Add an existing user to a team without asking them (studio administrators; others
        `invite`)."""
        body = {"username": username, "role": role}
        return Member.model_validate(self._json("POST", f"/teams/{team_id}/members", json=body))

    def set_member_role(self, team_id: int, user_id: int, role: str) -> Member:
        body = {"role": role}
        return Member.model_validate(
            self._json("PATCH", f"/teams/{team_id}/members/{user_id}", json=body)
        )

    def remove_member(self, team_id: int, user_id: int) -> None:
        """Remove a member (or leave, with your own user id); the last owner cannot go."""
        self._send("DELETE", f"/teams/{team_id}/members/{user_id}")

    def create_user(self, username: str, password: str, role: str = "member") -> UserAccount:
        """A new user in the team you act for (studio administrators)."""
        body = {"username": username, "password": password, "role": role}
        return UserAccount.model_validate(self._json("POST", "/users", json=body))

    # -- invitations: joining a team with the user's consent -----------------------------------

    def invite(self, team_id: int, username: str, role: str = "member") -> Invitation:
        """Invite `username` to a team (admins and owners); they accept or decline it."""
        body = {"username": username, "role": role}
        return Invitation.model_validate(
            self._json("POST", f"/teams/{team_id}/invitations", json=body)
        )

    def sent_invitations(self, team_id: int) -> list[Invitation]:
        """The invitations a team sent, newest first, with their answers (admins and owners)."""
        return [
            Invitation.model_validate(i) for i in self._json("GET", f"/teams/{team_id}/invitations")
        ]

    def withdraw_invitation(self, team_id: int, invitation_id: int) -> Invitation:
        """Take back a pending invitation of a team (admins and owners)."""
        return Invitation.model_validate(
            self._json("DELETE", f"/teams/{team_id}/invitations/{invitation_id}")
        )

    def invitations(self) -> list[Invitation]:
        """Invitations to teams waiting for your answer."""
        return [Invitation.model_validate(i) for i in self._json("GET", "/invitations")]

    def accept_invitation(self, invitation_id: int) -> Invitation:
        """Join the invitation's team with its role."""
        return Invitation.model_validate(self._json("POST", f"/invitations/{invitation_id}/accept"))

    def decline_invitation(self, invitation_id: int) -> Invitation:
        return Invitation.model_validate(
            self._json("POST", f"/invitations/{invitation_id}/decline")
        )
