"""The agents' prompts. This folder ships in the wheel as the data package `crew.prompts`."""
