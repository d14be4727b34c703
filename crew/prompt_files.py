"""The agents' prompts: the files of `prompts/` (shipped in the wheel as `crew.prompts`), or
the user's copies in `CREW_PROMPTS_DIR`."""

from __future__ import annotations

from importlib import resources

from crew.errors import SettingsError
from crew.settings import Settings


def load_prompt(settings: Settings, name: str) -> str:
    """prompts/<name>.md, or the user's copy in CREW_PROMPTS_DIR."""
    if settings.prompts_dir is not None and (settings.prompts_dir / f"{name}.md").is_file():
        return (settings.prompts_dir / f"{name}.md").read_text()
    shipped = resources.files("crew.prompts") / f"{name}.md"
    if shipped.is_file():
        return shipped.read_text(encoding="utf-8")
    raise SettingsError(f"no prompt {name}.md: put it in CREW_PROMPTS_DIR or reinstall crew")
