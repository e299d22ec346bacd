"""The broker's authentication and ACL objects, one per distinct file, shared by listeners.

Builds a :class:`PasswordAuthenticator` per (password file, allow_anonymous) pair and an
:class:`AclFile` per ACL file; listeners without a password file get :class:`AnonymousPolicy`,
without an ACL file :data:`ALLOW_ALL`. SIGHUP re-reads every file (a bad file keeps the old one in
force); changing which file a listener uses needs a restart.
"""

from __future__ import annotations

import logging

from .acl import ALLOW_ALL, AclFile, AclPolicy
from .auth import AnonymousPolicy, Authenticator
from .authn import PasswordAuthenticator
from .config import BrokerConfig, ListenerSettings

__all__ = ["Security"]

log = logging.getLogger("mqttv5.broker")


class Security:
    """Authenticators and ACLs for the broker's listeners."""

    def __init__(self, override: Authenticator | None = None) -> None:
        self.override = override
        self._authenticators: dict[tuple[str, bool], PasswordAuthenticator] = {}
        self._acls: dict[str, AclFile] = {}

    def authenticator_for(self, config: BrokerConfig, listener: ListenerSettings) -> Authenticator:
        """The authenticator of ``listener`` (the embedding program's override if given)."""
        if self.override is not None:
            return self.override
        allow = config.effective_allow_anonymous(listener)
        path = config.effective_password_file(listener)
        if path is None:
            return AnonymousPolicy(allow)
        key = (path, allow)
        auth = self._authenticators.get(key)
        if auth is None:
            auth = self._authenticators[key] = PasswordAuthenticator(path, allow)
            log.info("Loaded password file %s.", path)
        return auth

    def acl_for(self, config: BrokerConfig, listener: ListenerSettings) -> AclPolicy:
        """The ACL of ``listener``."""
        path = config.effective_acl_file(listener)
        if path is None:
            return ALLOW_ALL
        acl = self._acls.get(path)
        if acl is None:
            acl = self._acls[path] = AclFile.load(path)
            log.info("Loaded ACL file %s.", path)
        return acl

    def reload(self, old: BrokerConfig, new: BrokerConfig) -> list[str]:
        """Re-read every password and ACL file; report file changes that need a restart."""
        restart = []
        old_files = [
            (old.effective_password_file(x), old.effective_acl_file(x))
            for x in old.effective_listeners()
        ]
        new_files = [
            (new.effective_password_file(x), new.effective_acl_file(x))
            for x in new.effective_listeners()
        ]
        if old_files != new_files:
            restart.append("password_file/acl_file")
        for auth in self._authenticators.values():
            auth.reload()
        for acl in self._acls.values():
            acl.reload()
        if self._authenticators or self._acls:
            log.info("Reloaded password and ACL files.")
        return restart

    def close(self) -> None:
        """Stop the authenticators' hashing threads."""
        for auth in self._authenticators.values():
            auth.close()
