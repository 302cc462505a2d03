"""The Speech and media settings: parsing, defaults, and ConfigError naming the setting."""

from __future__ import annotations

import pytest

from callflow import ConfigError, Settings
from callflow.speech import SPEECH_SCOPE, SpeechConfig, media_base_url, media_key

SECRET = "0123456789abcdef0123456789abcdef"


def test_speech_defaults_leave_speech_off() -> None:
    """Without a region or endpoint, no Speech resource is configured and no config is built."""
    s = Settings.from_env({})
    assert not s.speech_configured
    assert s.speech_voice == "en-US-JennyNeural"
    assert s.speech_language == "en-US"
    assert s.media_path == "/api/media"
    assert SpeechConfig.from_settings(s) is None


def test_region_and_key_give_the_regional_hosts() -> None:
    """A region maps to its tts and stt hosts; the key never shows in repr."""
    s = Settings.from_env({"CALLFLOW_SPEECH_REGION": "WestEurope", "CALLFLOW_SPEECH_KEY": "k" * 32})
    config = SpeechConfig.from_settings(s)
    assert config is not None
    assert config.tts_url == "https://westeurope.tts.speech.microsoft.com/cognitiveservices/v1"
    assert config.voices_url.endswith(
        "westeurope.tts.speech.microsoft.com/cognitiveservices/voices/list"
    )
    assert config.stt_url == (
        "https://westeurope.stt.speech.microsoft.com/speech/recognition/conversation/"
        "cognitiveservices/v1"
    )
    assert "k" * 32 not in repr(s)
    assert config.auth_setting == "CALLFLOW_SPEECH_KEY"


def test_endpoint_gets_tts_and_stt_paths() -> None:
    """A custom-domain endpoint carries /tts and /stt paths."""
    s = Settings.from_env(
        {
            "CALLFLOW_SPEECH_ENDPOINT": "https://my-speech.cognitiveservices.azure.com/",
            "CALLFLOW_SPEECH_KEY": "key",
        }
    )
    config = SpeechConfig.from_settings(s)
    assert config is not None
    assert (
        config.tts_url == "https://my-speech.cognitiveservices.azure.com/tts/cognitiveservices/v1"
    )
    assert config.stt_url.startswith("https://my-speech.cognitiveservices.azure.com/stt/speech/")


@pytest.mark.anyio
async def test_entra_needs_an_endpoint_and_credentials_and_sends_a_bearer() -> None:
    """SPEECH_AUTH=entra without an endpoint or app credentials names both settings; with
    them, requests carry the token the provider returns."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"CALLFLOW_SPEECH_REGION": "westus", "CALLFLOW_SPEECH_AUTH": "entra"})
    assert "CALLFLOW_SPEECH_ENDPOINT" in str(info.value)
    assert "APP_SECRET" in str(info.value)
    s = Settings(
        app_id="a",
        app_secret="s",
        speech_endpoint="https://x.cognitiveservices.azure.com",
        speech_auth="entra",
    )
    s.check_consistency()
    with pytest.raises(ConfigError, match="SPEECH_AUTH"):
        SpeechConfig.from_settings(s)

    async def token() -> str:
        return "entra-token"

    config = SpeechConfig.from_settings(s, token=token)
    assert config is not None
    assert await config.headers() == {"Authorization": "Bearer entra-token"}
    assert config.auth_setting == "CALLFLOW_SPEECH_AUTH"
    assert SPEECH_SCOPE == "https://cognitiveservices.azure.com/.default"


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"CALLFLOW_SPEECH_REGION": "west europe"}, "CALLFLOW_SPEECH_REGION"),
        ({"CALLFLOW_SPEECH_REGION": "westus"}, "CALLFLOW_SPEECH_KEY"),
        ({"CALLFLOW_SPEECH_AUTH": "password"}, "CALLFLOW_SPEECH_AUTH"),
        ({"CALLFLOW_SPEECH_VOICE": "Jenny<script>"}, "CALLFLOW_SPEECH_VOICE"),
        ({"CALLFLOW_SPEECH_LANGUAGE": "english please"}, "CALLFLOW_SPEECH_LANGUAGE"),
        ({"CALLFLOW_MEDIA_PATH": "media"}, "CALLFLOW_MEDIA_PATH"),
        ({"CALLFLOW_MEDIA_PATH": "/api/../etc"}, "CALLFLOW_MEDIA_PATH"),
        ({"CALLFLOW_MEDIA_PATH": "/api/calls"}, "CALLFLOW_MEDIA_PATH"),
        ({"CALLFLOW_MEDIA_SECRET": "short"}, "CALLFLOW_MEDIA_SECRET"),
        ({"CALLFLOW_MEDIA_TTL": "5"}, "CALLFLOW_MEDIA_TTL"),
        (
            {"CALLFLOW_SPEECH_ENDPOINT": "http://speech.example.com", "CALLFLOW_SPEECH_KEY": "k"},
            "CALLFLOW_SPEECH_ENDPOINT",
        ),
        (
            {
                "CALLFLOW_SPEECH_ENDPOINT": "https://s.example.com",
                "CALLFLOW_SPEECH_REGION": "westus",
                "CALLFLOW_SPEECH_KEY": "k",
            },
            "CALLFLOW_SPEECH_ENDPOINT",
        ),
    ],
)
def test_bad_values_name_the_setting(environ: dict[str, str], named: str) -> None:
    """Each bad value raises ConfigError naming its setting."""
    with pytest.raises(ConfigError) as info:
        Settings.from_env(environ)
    assert named in str(info.value)


def test_media_urls_and_keys() -> None:
    """Prompts are served at the callback URL's origin + MEDIA_PATH; the key comes from
    MEDIA_SECRET, else FLEET_SECRET (the same on every worker), else is random."""
    s = Settings(callback_url="https://bot.example.com/api/calls", media_path="/m/prompts")
    assert media_base_url(s) == "https://bot.example.com/m/prompts"
    with pytest.raises(ConfigError, match="CALLBACK_URL"):
        media_base_url(Settings())
    assert media_key(Settings()) != media_key(Settings())
    fleet = Settings(fleet_secret=SECRET)
    assert media_key(fleet) == media_key(Settings(fleet_secret=SECRET)) != SECRET.encode()
    assert media_key(Settings(media_secret=SECRET, fleet_secret="x" * 40)) == media_key(
        Settings(media_secret=SECRET)
    )
