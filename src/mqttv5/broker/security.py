"""The broker's authentication and ACL objects, one per distinct file, shared by listeners.

Builds a :class:`PasswordAuthenticator` per (password file, allow_anonymous) pair, a
:class:`ScramAuthenticator` per SCRAM file and an :class:`AclFile` per ACL file; a listener with
a SCRAM file gets ``CompositeAuthenticator([scram, password], "first")`` (SCRAM-SHA-256 clients
go to the SCRAM file, user name and password clients to the password file), listeners without
either file get :class:`AnonymousPolicy`, without an ACL file :data:`ALLOW_ALL`. SIGHUP re-reads
every file (a bad file keeps the old one in force); changing which file a listener uses needs a
restart.
"""

from __future__ import annotations

import logging

from .acl import ALLOW_ALL, AclFile, AclPolicy
from .auth import AnonymousPolicy, Authenticator
from .authn import AuthProvider, CompositeAuthenticator, PasswordAuthenticator
from .config import BrokerConfig, ListenerSettings
from .scram import ScramAuthenticator

__all__ = ["Security"]

log = logging.getLogger("mqttv5.broker")


class Security:
    """Authenticators and ACLs for the broker's listeners."""

    def __init__(self, override: Authenticator | None = None) -> None:
        self.override = override
        self._authenticators: dict[tuple[str, bool], PasswordAuthenticator] = {}
        self._acls: dict[str, AclFile] = {}
        self._scram: dict[str, ScramAuthenticator] = {}
        self._combined: dict[tuple[str | None, str, bool], CompositeAuthenticator] = {}

    def authenticator_for(self, config: BrokerConfig, listener: ListenerSettings) -> Authenticator:
        """The authenticator of ``listener`` (the embedding program's override if given)."""
        if self.override is not None:
            return self.override
        allow = config.effective_allow_anonymous(listener)
        path = config.effective_password_file(listener)
        scram_path = config.effective_scram_file(listener)
        if scram_path is not None:
            return self._with_scram(path, scram_path, allow)
        if path is None:
            return AnonymousPolicy(allow)
        return self._password(path, allow)

    def _password(self, path: str, allow: bool) -> PasswordAuthenticator:
        key = (path, allow)
        auth = self._authenticators.get(key)
        if auth is None:
            auth = self._authenticators[key] = PasswordAuthenticator(path, allow)
            log.info("Loaded password file %s.", path)
        return auth

    def _with_scram(self, path: str | None, scram_path: str, allow: bool) -> Authenticator:
        key = (path, scram_path, allow)
        combined = self._combined.get(key)
        if combined is None:
            scram = self._scram.get(scram_path)
            if scram is None:
                scram = self._scram[scram_path] = ScramAuthenticator(scram_path, allow)
                log.info("Loaded SCRAM file %s.", scram_path)
            providers: list[AuthProvider] = [scram]
            if path is not None:
                providers.append(self._password(path, allow))
            combined = CompositeAuthenticator(providers, "first", allow_anonymous=allow)
            self._combined[key] = combined
        return combined

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
            (old.effective_password_file(x), old.effective_scram_file(x), old.effective_acl_file(x))
            for x in old.effective_listeners()
        ]
        new_files = [
            (new.effective_password_file(x), new.effective_scram_file(x), new.effective_acl_file(x))
            for x in new.effective_listeners()
        ]
        if old_files != new_files:
            restart.append("password_file/scram_file/acl_file")
        for auth in self._authenticators.values():
            auth.reload()
        for scram in self._scram.values():
            scram.reload()
        for acl in self._acls.values():
            acl.reload()
        if self._authenticators or self._scram or self._acls:
            log.info("Reloaded password, SCRAM and ACL files.")
        return restart

    def close(self) -> None:
        """Stop the authenticators' hashing threads."""
        for auth in self._authenticators.values():
            auth.close()
        for scram in self._scram.values():
            scram.close()
