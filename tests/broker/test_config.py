"""Tests for mqttv5.broker.config: TOML loading, validation, flags, the generated reference."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from mqttv5.broker.config import (
    BROKER_KEYS,
    DEFAULT_PORTS,
    LISTENER_KEYS,
    BrokerConfig,
    ListenerSettings,
    changed_keys,
    config_from_args,
    config_reference_markdown,
    is_loopback,
    load_config,
    validate_config,
    validate_security,
)
from mqttv5.protocol.errors import ConfigError

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


@pytest.fixture
def write(tmp_path: Path):
    """Write TOML text to a file and return its path."""

    def write(text: str, name: str = "broker.toml") -> str:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return str(path)

    return write


def load_error(write, text: str) -> ConfigError:
    path = write(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == path
    return info.value


def flags(**values) -> argparse.Namespace:
    """A namespace like mqttv5 broker's parser makes: every flag present, None when not given."""
    names = [
        "config", "bind", "port", "storage", "data_dir", "allow_anonymous", "password_file",
        "acl_file", "log_level", "log_format", "log_file", "max_packet_size", "sys_interval",
    ]  # fmt: skip
    args = dict.fromkeys(names)
    args["verbose"] = False
    args.update(values)
    return argparse.Namespace(**args)


# --- loading --------------------------------------------------------------------------------------


class TestLoad:
    def test_empty_file_gives_the_defaults(self, write):
        assert load_config(write("")) == BrokerConfig()

    def test_comments_only_gives_the_defaults(self, write):
        assert load_config(write("# nothing here\n\n")) == BrokerConfig()

    def test_missing_keys_take_defaults(self, write):
        config = load_config(write('log_level = "debug"\n[[listener]]\nport = 1884\n'))
        assert config.log_level == "debug"
        assert config.max_packet_size == BrokerConfig().max_packet_size
        assert config.listeners == [ListenerSettings(port=1884)]
        assert config.listeners[0].bind == "127.0.0.1"
        assert config.listeners[0].protocol_versions == [3, 4, 5]

    def test_every_top_level_key_is_read(self, write):
        text = """
            allow_anonymous = false
            password_file = "/etc/p"
            scram_file = "/etc/s"
            acl_file = "/etc/a"
            storage = "memory"
            data_dir = "/var/lib/mqttv5"
            storage_sync = "full"
            log_level = "warning"
            log_format = "json"
            log_file = "/var/log/mqttv5.log"
            max_packet_size = 2048
            receive_maximum = 100
            topic_alias_maximum = 0
            max_keepalive = 600
            max_topic_levels = 16
            max_subscriptions = 50
            max_client_id_length = 64
            connect_timeout = 2.5
            maximum_qos = 1
            retain_available = false
            wildcard_subscriptions = false
            subscription_identifiers = false
            shared_subscriptions = false
            max_inflight_messages = 5
            max_queued_messages = 0
            max_queued_bytes = 1_000_000
            queue_overflow = "drop_oldest"
            max_session_expiry = 3600
            persistent_client_expiration = 86400
            assigned_client_id_prefix = "gen-"
            max_connections = 100
            max_connections_per_address = 5
            max_connection_rate = 2
            connection_rate_burst = 4
            max_publish_rate = 10.5
            publish_rate_burst = 20
            max_inbound_bytes_per_second = 100_000
            max_retained_messages = 0
            max_retained_bytes = 0
            outbound_high_water = 65536
            memory_limit = 1_000_000
            sys_interval = 0
            keepalive_sweep_interval = 0.5
            shutdown_timeout = 1
        """
        config = load_config(write(text))
        expected = BrokerConfig(
            allow_anonymous=False, password_file="/etc/p", acl_file="/etc/a", storage="memory",
            data_dir="/var/lib/mqttv5", storage_sync="full", log_level="warning", log_format="json",
            log_file="/var/log/mqttv5.log", max_packet_size=2048, receive_maximum=100,
            topic_alias_maximum=0, max_keepalive=600, max_topic_levels=16, max_subscriptions=50,
            max_client_id_length=64, connect_timeout=2.5, maximum_qos=1, retain_available=False,
            wildcard_subscriptions=False, subscription_identifiers=False,
            shared_subscriptions=False, max_inflight_messages=5, max_queued_messages=0,
            max_queued_bytes=1_000_000, queue_overflow="drop_oldest", max_session_expiry=3600,
            persistent_client_expiration=86400, assigned_client_id_prefix="gen-",
            max_connections=100, max_connections_per_address=5, max_connection_rate=2.0,
            connection_rate_burst=4, max_publish_rate=10.5, publish_rate_burst=20,
            max_inbound_bytes_per_second=100_000, max_retained_messages=0, max_retained_bytes=0,
            scram_file="/etc/s", outbound_high_water=65536, memory_limit=1_000_000,
            sys_interval=0.0, keepalive_sweep_interval=0.5, shutdown_timeout=1.0,
        )  # fmt: skip
        assert config == expected
        # every key but the listeners differs from its default: the test covers them all
        # (the tables [[bridge]] and [metrics] are covered in test_bridge.py, test_metrics.py)
        tables = {"listeners", "bridges", "metrics"}
        assert set(changed_keys(BrokerConfig(), config)) == set(BROKER_KEYS) - tables

    def test_every_listener_key_is_read(self, write):
        text = """
            [[listener]]
            type = "tcp"
            bind = "0.0.0.0"
            port = 11883
            allow_anonymous = true
            password_file = "/etc/p"
            acl_file = "/etc/a"
            mount_point = "site1/"
            max_connections = 10
            max_packet_size = 4096
            protocol_versions = [5]
            name = "public"
            scram_file = "/etc/s"
            max_connections_per_address = 3
            max_connection_rate = 0.5
            connection_rate_burst = 2
        """
        (listener,) = load_config(write(text)).listeners
        assert (listener.scram_file, listener.max_connections_per_address) == ("/etc/s", 3)
        assert (listener.max_connection_rate, listener.connection_rate_burst) == (0.5, 2)
        listener.scram_file = listener.max_connections_per_address = None
        listener.max_connection_rate = listener.connection_rate_burst = None
        assert listener == ListenerSettings(
            type="tcp", bind="0.0.0.0", port=11883, allow_anonymous=True, password_file="/etc/p",
            acl_file="/etc/a", mount_point="site1/", max_connections=10, max_packet_size=4096,
            protocol_versions=[5], name="public",
        )  # fmt: skip
        assert listener.label == "public"

    def test_integers_are_accepted_for_seconds(self, write):
        config = load_config(write("sys_interval = 5\nconnect_timeout = 3\n"))
        assert config.sys_interval == 5.0
        assert isinstance(config.sys_interval, float)
        assert isinstance(config.connect_timeout, float)

    def test_listeners_keep_file_order(self, write):
        text = "[[listener]]\nport = 1\n[[listener]]\nport = 2\n[[listener]]\nport = 3\n"
        assert [lis.port for lis in load_config(write(text)).listeners] == [1, 2, 3]

    def test_port_zero_is_allowed(self, write):
        assert load_config(write("[[listener]]\nport = 0\n")).listeners[0].port == 0


class TestUnknownKeys:
    def test_unknown_top_level_key(self, write):
        error = load_error(write, "log_level = 'info'\nfrobnicate = 1\n")
        assert error.key == "frobnicate"
        assert "unknown key" in error.message

    def test_misspelt_key_gets_a_suggestion(self, write):
        error = load_error(write, "allow_anonymus = true\n")
        assert error.key == "allow_anonymus"
        assert "did you mean 'allow_anonymous'?" in error.message

    def test_mosquitto_name_is_translated(self, write):
        error = load_error(write, "message_size_limit = 1000\n")
        assert error.key == "message_size_limit"
        assert "max_packet_size" in error.message

    def test_unknown_table(self, write):
        error = load_error(write, "[limits]\nmax = 1\n")
        assert error.key == "limits"

    def test_field_name_listeners_is_not_the_toml_key(self, write):
        error = load_error(write, "listeners = []\n")
        assert error.key == "listeners"
        assert "'listener'" in error.message

    def test_unknown_listener_key_names_its_listener(self, write):
        text = "[[listener]]\nport = 1883\n[[listener]]\nport = 1884\nprot = 5\n"
        error = load_error(write, text)
        assert error.key == "listener[1].prot"
        assert "did you mean 'port'?" in error.message

    def test_error_text_names_key_and_file(self, write):
        error = load_error(write, "[[listener]]\nbogus = 1\n")
        assert "listener[0].bogus" in str(error)
        assert error.source is not None
        assert error.source in str(error)


class TestBadValues:
    @pytest.mark.parametrize(
        ("text", "key", "expected"),
        [
            ('max_packet_size = "big"', "max_packet_size", 'must be an integer (got "big")'),
            ("max_packet_size = 1.5", "max_packet_size", "must be an integer (got 1.5)"),
            ("max_packet_size = true", "max_packet_size", "must be an integer (got true)"),
            ('retain_available = "yes"', "retain_available", 'must be true or false (got "yes")'),
            ("retain_available = 1", "retain_available", "must be true or false (got 1)"),
            ("allow_anonymous = 0", "allow_anonymous", "must be true or false (got 0)"),
            ("log_file = 3", "log_file", "must be a string (got 3)"),
            ('sys_interval = "10s"', "sys_interval", 'must be a number (got "10s")'),
            ("storage = ['memory']", "storage", 'must be a string (got ["memory"])'),
            ("sys_interval = nan", "sys_interval", "must be a finite number"),
            ("sys_interval = inf", "sys_interval", "must be a finite number"),
            ("[[listener]]\nport = '1883'", "listener[0].port", 'must be an integer (got "1883")'),
            ("[[listener]]\nprotocol_versions = 5", "listener[0].protocol_versions", "array"),
            ("[[listener]]\nprotocol_versions = ['5']", "listener[0].protocol_versions", "array"),
            ("[[listener]]\nallow_anonymous = 'true'", "listener[0].allow_anonymous", "true or"),
        ],
    )
    def test_wrong_type(self, write, text, key, expected):
        error = load_error(write, text + "\n")
        assert error.key == key
        assert expected in error.message

    @pytest.mark.parametrize(
        ("text", "key", "expected"),
        [
            ("[[listener]]\nport = 70000", "listener[0].port", "must be 0..65535 (got 70000)"),
            ("[[listener]]\nport = -1", "listener[0].port", "must be 0..65535 (got -1)"),
            ("max_packet_size = 0", "max_packet_size", "must be 1..268435460 (got 0)"),
            ("max_packet_size = 268435461", "max_packet_size", "must be 1..268435460"),
            ("receive_maximum = 0", "receive_maximum", "must be 1..65535 (got 0)"),
            ("receive_maximum = 65536", "receive_maximum", "must be 1..65535 (got 65536)"),
            ("topic_alias_maximum = -1", "topic_alias_maximum", "must be 0..65535"),
            ("topic_alias_maximum = 65536", "topic_alias_maximum", "must be 0..65535"),
            ("maximum_qos = 3", "maximum_qos", "must be 0..2 (got 3)"),
            ("max_keepalive = 0", "max_keepalive", "must be 1..65535"),
            ("max_keepalive = 70000", "max_keepalive", "must be 1..65535"),
            ("max_inflight_messages = 0", "max_inflight_messages", "must be 1..65535"),
            ("max_queued_messages = -1", "max_queued_messages", "must be at least 0"),
            ("max_queued_bytes = -5", "max_queued_bytes", "must be at least 0"),
            ("max_subscriptions = -1", "max_subscriptions", "must be at least 0"),
            ("max_client_id_length = 22", "max_client_id_length", "must be 23..65535"),
            ("max_topic_levels = 0", "max_topic_levels", "must be 1..65535"),
            ("max_session_expiry = -1", "max_session_expiry", "must be 0..4294967295"),
            ("persistent_client_expiration = -1", "persistent_client_expiration", "0..4294967295"),
            ("max_connections = 0", "max_connections", "-1 (unlimited) or at least 1 (got 0)"),
            ("max_connections = -2", "max_connections", "-1 (unlimited) or at least 1"),
            ("outbound_high_water = 0", "outbound_high_water", "must be at least 1"),
            ("memory_limit = 0", "memory_limit", "must be at least 1"),
            ("connect_timeout = 0", "connect_timeout", "must be greater than 0 (got 0)"),
            ("keepalive_sweep_interval = -1.0", "keepalive_sweep_interval", "greater than 0"),
            ("sys_interval = -1", "sys_interval", "must be at least 0 (got -1)"),
            ("shutdown_timeout = -0.5", "shutdown_timeout", "must be at least 0"),
            ("[[listener]]\nmax_packet_size = 0", "listener[0].max_packet_size", "1..268435460"),
            ("[[listener]]\nmax_connections = 0", "listener[0].max_connections", "-1 (unlimited)"),
            ("[[listener]]\nprotocol_versions = []", "listener[0].protocol_versions", "at least"),
            (
                "[[listener]]\nprotocol_versions = [3, 6]",
                "listener[0].protocol_versions",
                "must contain only 3, 4 and 5 (got [3, 6])",
            ),
            ("[[listener]]\nmount_point = 'a/#'", "listener[0].mount_point", "wildcards"),
            ("[[listener]]\nbind = ''", "listener[0].bind", "IP address or host name"),
            ("[[listener]]\nbind = 'a b'", "listener[0].bind", "IP address or host name"),
            ('assigned_client_id_prefix = "a\\u0000"', "assigned_client_id_prefix", "U+0000"),
        ],
    )
    def test_out_of_range(self, write, text, key, expected):
        error = load_error(write, text + "\n")
        assert error.key == key
        assert expected in error.message

    @pytest.mark.parametrize(
        ("text", "key"),
        [
            ('storage = "mysql"', "storage"),
            ('log_level = "verbose"', "log_level"),
            ('log_level = "DEBUG"', "log_level"),
            ('log_format = "xml"', "log_format"),
            ('queue_overflow = "drop_all"', "queue_overflow"),
            ('[[listener]]\ntype = "quic"', "listener[0].type"),
        ],
    )
    def test_bad_enum_lists_the_choices(self, write, text, key):
        error = load_error(write, text + "\n")
        assert error.key == key
        assert error.message.startswith("must be one of ")
        spec = LISTENER_KEYS["type"] if key.startswith("listener") else BROKER_KEYS[key]
        for choice in spec.choices:
            assert f'"{choice}"' in error.message

    def test_dtls_listener_needs_keys(self, write):
        error = load_error(write, '[[listener]]\nport = 1\n[[listener]]\ntype = "dtls"\n')
        assert error.key == "listener[1].psk_file"
        assert error.message == "a dtls listener needs psk_file, or certfile and keyfile"

    def test_udp_keys_only_on_udp_listeners(self, write):
        error = load_error(write, "[[listener]]\nport = 1\nmtu = 1400\n")
        assert error.key == "listener[0].mtu"
        assert "udp and dtls listeners only" in error.message

    def test_rto_min_above_rto_max(self, write):
        text = '[[listener]]\ntype = "udp"\nport = 1\nrto_min = 5.0\nrto_max = 1.0\n'
        error = load_error(write, text)
        assert error.key == "listener[0].rto_min"
        assert error.message == "must not exceed rto_max"

    def test_listener_as_a_table_instead_of_an_array(self, write):
        error = load_error(write, "[listener]\nport = 1883\n")
        assert error.key == "listener"
        assert "[[listener]]" in error.message

    def test_listener_as_a_value(self, write):
        error = load_error(write, "listener = 1883\n")
        assert error.key == "listener"

    def test_two_listeners_on_one_address(self, write):
        text = "[[listener]]\nport = 1884\n[[listener]]\nport = 1884\n"
        error = load_error(write, text)
        assert error.key == "listener[1].port"
        assert "listener[0] already uses 127.0.0.1:1884" in error.message

    def test_two_ephemeral_listeners_are_fine(self, write):
        text = "[[listener]]\nport = 0\n[[listener]]\nport = 0\n"
        assert len(load_config(write(text)).listeners) == 2

    def test_first_error_in_file_order_wins(self, write):
        error = load_error(write, "maximum_qos = 7\nstorage = 'x'\n")
        assert error.key == "maximum_qos"


class TestFileErrors:
    def test_toml_syntax_error_names_file_and_line(self, write):
        path = write("log_level = 'info'\n\nmax_packet_size = = 5\n")
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert info.value.key == "line 3"
        assert info.value.source == path
        assert "invalid TOML" in info.value.message
        assert "column" in info.value.message

    def test_toml_error_at_end_of_file(self, write):
        with pytest.raises(ConfigError) as info:
            load_config(write("a = 1\nb = [\n"))
        assert info.value.key == "line 2"
        assert "end of file" in info.value.message

    def test_duplicate_key_is_a_syntax_error(self, write):
        with pytest.raises(ConfigError) as info:
            load_config(write("sys_interval = 1\nsys_interval = 2\n"))
        assert info.value.key == "line 2"

    def test_missing_file(self, tmp_path):
        path = str(tmp_path / "nope.toml")
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert info.value.source == path
        assert "cannot read" in info.value.message
        assert path in info.value.message

    def test_not_utf8(self, tmp_path):
        path = tmp_path / "latin1.toml"
        path.write_bytes(b'data_dir = "/caf\xe9"\n')
        with pytest.raises(ConfigError) as info:
            load_config(str(path))
        assert "UTF-8" in info.value.message


# --- the objects ----------------------------------------------------------------------------------


class TestObjects:
    def test_port_defaults_by_type(self):
        for kind, port in DEFAULT_PORTS.items():
            assert ListenerSettings(type=kind).port == port
        assert DEFAULT_PORTS == {
            "tcp": 1883, "tls": 8883, "ws": 8080, "wss": 8443, "udp": 1884, "dtls": 8884,
        }  # fmt: skip

    def test_explicit_port_wins_and_survives_replace(self):
        listener = ListenerSettings(type="tcp", port=0)
        assert listener.port == 0
        assert dataclasses.replace(listener, bind="::1").port == 0

    def test_effective_listeners_default_to_both_loopbacks(self):
        config = BrokerConfig()
        assert config.listeners == []
        listeners = config.effective_listeners()
        assert [(lis.type, lis.bind, lis.port) for lis in listeners] == [
            ("tcp", "127.0.0.1", 1883),
            ("tcp", "::1", 1883),
        ]
        assert all(config.effective_allow_anonymous(lis) for lis in listeners)

    def test_effective_listeners_are_the_configured_ones(self):
        listener = ListenerSettings(port=5)
        assert BrokerConfig(listeners=[listener]).effective_listeners() == [listener]

    def test_defaults_do_not_share_lists(self):
        a, b = BrokerConfig(), BrokerConfig()
        a.listeners.append(ListenerSettings())
        assert b.listeners == []
        x, y = ListenerSettings(), ListenerSettings()
        x.protocol_versions.append(6)
        assert y.protocol_versions == [3, 4, 5]

    def test_address(self):
        assert ListenerSettings(bind="0.0.0.0", port=1).address == "0.0.0.0:1"
        assert ListenerSettings(bind="::1", port=2).address == "[::1]:2"
        assert ListenerSettings(bind="::", port=3).label == "tcp [::]:3"

    @pytest.mark.parametrize(
        ("listener", "global_", "password", "expected"),
        [
            (None, None, None, True),
            (None, None, "/p", False),  # a password file applies: Mosquitto 2.0 defaults to false
            (None, True, "/p", True),
            (None, False, None, False),
            (True, False, "/p", True),
            (False, True, None, False),
        ],
    )
    def test_effective_allow_anonymous(self, listener, global_, password, expected):
        config = BrokerConfig(allow_anonymous=global_, password_file=password)
        assert config.effective_allow_anonymous(ListenerSettings(allow_anonymous=listener)) is (
            expected
        )

    def test_listener_inherits_files_and_packet_size(self):
        config = BrokerConfig(password_file="/g", acl_file="/ga", max_packet_size=100)
        plain = ListenerSettings()
        own = ListenerSettings(password_file="/l", acl_file="/la", max_packet_size=50)
        assert config.effective_password_file(plain) == "/g"
        assert config.effective_password_file(own) == "/l"
        assert config.effective_acl_file(plain) == "/ga"
        assert config.effective_acl_file(own) == "/la"
        assert config.effective_max_packet_size(plain) == 100
        assert config.effective_max_packet_size(own) == 50

    def test_declaration_table_covers_every_field(self):
        assert list(BROKER_KEYS) == [f.name for f in dataclasses.fields(BrokerConfig)]
        assert list(LISTENER_KEYS) == [f.name for f in dataclasses.fields(ListenerSettings)]
        for spec in [*BROKER_KEYS.values(), *LISTENER_KEYS.values()]:
            assert spec.doc.strip()
            assert "|" not in spec.doc  # would break the Markdown table

    def test_defaults_are_valid(self):
        validate_config(BrokerConfig())

    @pytest.mark.parametrize(
        ("config", "key"),
        [
            (BrokerConfig(receive_maximum=0), "receive_maximum"),
            (BrokerConfig(log_level="loud"), "log_level"),
            (BrokerConfig(max_packet_size="1"), "max_packet_size"),  # type: ignore[arg-type]
            (BrokerConfig(listeners=[ListenerSettings(port=99999)]), "listener[0].port"),
            (BrokerConfig(listeners=[ListenerSettings(type="quic")]), "listener[0].type"),
        ],
    )
    def test_validate_config_checks_objects_built_in_python(self, config, key):
        with pytest.raises(ConfigError) as info:
            validate_config(config)
        assert info.value.key == key

    def test_changed_keys(self):
        old = BrokerConfig()
        new = dataclasses.replace(old, log_level="debug", listeners=[ListenerSettings(port=0)])
        assert changed_keys(old, new) == ["listeners", "log_level"]
        assert changed_keys(old, BrokerConfig()) == []


# --- Mosquitto 2.0's safety rule ------------------------------------------------------------------


class TestSecurity:
    @pytest.mark.parametrize(
        "host", ["127.0.0.1", "127.8.9.10", "::1", "localhost", "LOCALHOST", "::ffff:127.0.0.1"]
    )
    def test_loopback(self, host):
        assert is_loopback(host)

    @pytest.mark.parametrize(
        "host", ["0.0.0.0", "::", "192.168.1.2", "10.0.0.1", "example.com", "::ffff:10.0.0.1"]
    )
    def test_not_loopback(self, host):
        assert not is_loopback(host)

    def test_public_listener_without_auth_refuses_naming_allow_anonymous(self, write):
        error = load_error(write, '[[listener]]\nbind = "0.0.0.0"\nport = 1883\n')
        assert error.key == "allow_anonymous"
        assert error.message == (
            "listener 0.0.0.0:1883 is not on loopback: "
            "set allow_anonymous = true or a password_file"
        )

    def test_ipv6_address_in_the_message(self):
        config = BrokerConfig(listeners=[ListenerSettings(bind="::", port=1883)])
        with pytest.raises(ConfigError, match=r"listener \[::\]:1883 is not on loopback"):
            validate_security(config)

    def test_only_the_public_listener_matters(self, write):
        text = '[[listener]]\nport = 1\n[[listener]]\nbind = "10.1.2.3"\nport = 2\n'
        error = load_error(write, text)
        assert "10.1.2.3:2" in error.message

    @pytest.mark.parametrize(
        "extra",
        [
            "allow_anonymous = true\n",
            "allow_anonymous = false\n",
            'password_file = "/etc/mqttv5/passwd"\n',
        ],
    )
    def test_a_global_choice_is_enough(self, write, extra):
        load_config(write(extra + '[[listener]]\nbind = "0.0.0.0"\n'))

    @pytest.mark.parametrize(
        "extra", ["allow_anonymous = true\n", "allow_anonymous = false\n", 'password_file = "/p"\n']
    )
    def test_a_listener_choice_is_enough(self, write, extra):
        load_config(write('[[listener]]\nbind = "0.0.0.0"\n' + extra))

    def test_loopback_listener_needs_no_choice(self, write):
        load_config(write('[[listener]]\nbind = "127.0.0.2"\n[[listener]]\nbind = "::1"\n'))

    def test_check_can_be_deferred(self, write):
        config = load_config(write('[[listener]]\nbind = "0.0.0.0"\n'), check_security=False)
        with pytest.raises(ConfigError):
            validate_security(config)


# --- command-line flags ---------------------------------------------------------------------------


class TestFlags:
    def test_no_flags_no_file_gives_the_defaults(self):
        assert config_from_args(flags(), None) == BrokerConfig()

    def test_flags_override_the_file(self, write):
        path = write(
            'storage = "memory"\nlog_level = "error"\nlog_format = "text"\nsys_interval = 30\n'
            "max_packet_size = 100\n"
        )
        args = flags(
            config=path, storage="sqlite", data_dir="/d", log_level="debug", log_format="json",
            log_file="/l", max_packet_size=5000, sys_interval=0.0, password_file="/p",
            acl_file="/a",
        )  # fmt: skip
        config = config_from_args(args, load_config(path))
        assert (config.storage, config.data_dir, config.log_level) == ("sqlite", "/d", "debug")
        assert (config.log_format, config.log_file) == ("json", "/l")
        assert (config.max_packet_size, config.sys_interval) == (5000, 0.0)
        assert (config.password_file, config.acl_file) == ("/p", "/a")

    def test_base_none_loads_the_config_file(self, write):
        path = write('log_level = "warning"\n')
        assert config_from_args(flags(config=path), None).log_level == "warning"
        assert config_from_args(flags(config=path, log_level="error")).log_level == "error"

    def test_file_values_survive_without_flags(self, write):
        path = write('log_level = "warning"\n[[listener]]\nport = 1999\n')
        config = config_from_args(flags(config=path))
        assert config.log_level == "warning"
        assert [lis.port for lis in config.listeners] == [1999]

    def test_port_alone_keeps_loopback(self):
        config = config_from_args(flags(port=1999))
        assert [(lis.type, lis.bind, lis.port) for lis in config.listeners] == [
            ("tcp", "127.0.0.1", 1999),
            ("tcp", "::1", 1999),
        ]

    def test_bind_alone_uses_1883(self):
        config = config_from_args(flags(bind="127.0.0.5"))
        assert [(lis.bind, lis.port) for lis in config.listeners] == [("127.0.0.5", 1883)]

    def test_bind_and_port(self):
        config = config_from_args(flags(bind="::1", port=0))
        assert [(lis.bind, lis.port) for lis in config.listeners] == [("::1", 0)]

    def test_port_replaces_the_file_listeners(self, write):
        path = write("[[listener]]\nport = 1\n[[listener]]\nport = 2\n")
        config = config_from_args(flags(config=path, port=3))
        assert {lis.port for lis in config.listeners} == {3}

    def test_verbose_means_debug(self):
        assert config_from_args(flags(verbose=True)).log_level == "debug"
        assert config_from_args(flags(verbose=True, log_level="error")).log_level == "debug"

    def test_public_bind_without_auth_refuses(self):
        with pytest.raises(ConfigError) as info:
            config_from_args(flags(bind="0.0.0.0"))
        assert info.value.key == "allow_anonymous"
        assert "0.0.0.0:1883" in info.value.message

    @pytest.mark.parametrize(
        "extra", [{"allow_anonymous": True}, {"allow_anonymous": False}, {"password_file": "/p"}]
    )
    def test_public_bind_with_a_choice(self, extra):
        config = config_from_args(flags(bind="0.0.0.0", **extra))
        assert config.listeners[0].bind == "0.0.0.0"

    def test_flag_can_make_a_public_file_listener_acceptable(self, write):
        path = write('[[listener]]\nbind = "0.0.0.0"\n')
        config = config_from_args(flags(config=path, allow_anonymous=True))
        assert config.effective_allow_anonymous(config.listeners[0])

    def test_flag_applies_to_every_listener(self, write):
        path = write(
            "[[listener]]\nport = 1\nallow_anonymous = true\nmax_packet_size = 10\n"
            '[[listener]]\nport = 2\npassword_file = "/own"\n'
        )
        config = config_from_args(
            flags(config=path, allow_anonymous=False, password_file="/p", max_packet_size=99)
        )
        for listener in config.listeners:
            assert not config.effective_allow_anonymous(listener)
            assert config.effective_password_file(listener) == "/p"
            assert config.effective_max_packet_size(listener) == 99

    def test_flags_do_not_modify_the_base(self, write):
        base = load_config(write("[[listener]]\nport = 1\nallow_anonymous = true\n"))
        config_from_args(flags(allow_anonymous=False), base)
        assert base.listeners[0].allow_anonymous is True

    @pytest.mark.parametrize(
        ("values", "key", "flag", "expected"),
        [
            ({"port": 70000}, "port", "--port", "must be 0..65535 (got 70000)"),
            ({"max_packet_size": 0}, "max_packet_size", "--max-packet-size", "1..268435460"),
            ({"sys_interval": -1.0}, "sys_interval", "--sys-interval", "at least 0"),
            ({"storage": "mysql"}, "storage", "--storage", "must be one of"),
            ({"bind": ""}, "bind", "--bind", "IP address or host name"),
        ],
    )
    def test_bad_flag_value_names_the_flag(self, values, key, flag, expected):
        with pytest.raises(ConfigError) as info:
            config_from_args(flags(**values))
        assert (info.value.key, info.value.source) == (key, flag)
        assert expected in info.value.message

    def test_namespace_may_lack_flags(self):
        assert config_from_args(argparse.Namespace(port=5)).listeners[0].port == 5


# --- the generated reference ----------------------------------------------------------------------


class TestReference:
    def test_every_key_is_documented(self):
        text = config_reference_markdown()
        for key in BROKER_KEYS:
            shown = {"listeners": "listener", "bridges": "bridge"}.get(key, key)
            assert f"| `{shown}` |" in text
        for key in LISTENER_KEYS:
            assert f"| `{key}` |" in text

    def test_rows_have_four_cells(self):
        for line in config_reference_markdown().splitlines():
            if line.startswith("| `"):
                assert len(re.findall(r"(?<!\\)\|", line)) == 5, line

    def test_defaults_are_shown(self):
        text = config_reference_markdown()
        assert "| `max_packet_size` | integer, 1..268435460 | `1048576` |" in text
        assert '| `storage` | string: `memory`, `sqlite` | `"sqlite"` |' in text
        assert "1883 (tcp), 8883 (tls)" in text

    def test_docs_generated_section_is_up_to_date(self):
        doc = DOC.read_text(encoding="utf-8")
        begin, end = "<!-- BEGIN GENERATED -->\n", "<!-- END GENERATED -->"
        assert doc.count(begin) == 1
        assert doc.count(end) == 1
        generated = doc[doc.index(begin) + len(begin) : doc.index(end)]
        assert generated == config_reference_markdown(), (
            "docs/configuration.md is stale: regenerate its GENERATED section with "
            "`mqttv5 broker --print-config-reference`"
        )

    def test_docs_example_loads(self, write):
        doc = DOC.read_text(encoding="utf-8")
        examples = re.findall(r"```toml\n(.*?)```", doc, re.DOTALL)
        assert examples
        for example in examples:
            load_config(write(example))
