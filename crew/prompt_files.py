"""The agents' prompts: the files of `prompts/` (shipped in the wheel as `crew.prompts`), or
the user's copies in `CREW_PROMPTS_DIR`."""

from __future__ import annotations

from importlib import resources

from crew.errors import SettingsError
from crew.settings import Settings


def load_prompt(settings: Settings, name: str) -> str:
    """prompts/<name>.md, or the user's copy in CREW_PROMPTS_DIR."""
    mine = settings.prompts_dir / f"{name}.md" if settings.prompts_dir is not None else None
    if mine is not None and mine.is_file():
        try:
            return mine.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"cannot read the prompt {mine} ({exc}): save it as UTF-8 text") from None
    shipped = resources.files("crew.prompts") / f"{name}.md"
    if shipped.is_file():
        return shipped.read_text(encoding="utf-8")
    raise SettingsError(f"no prompt {name}.md: put it in CREW_PROMPTS_DIR or reinstall crew")
