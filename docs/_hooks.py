"""MkDocs hooks (``hooks:`` in mkdocs.yml): the pages stay readable on GitHub *and* on the site.

- Pages link to example code the way GitHub resolves it, ``../examples/handlers.py``:
  a path outside ``docs/``. The site ships ``examples/`` as static files and those
  links are rewritten to point at the copies, so ``mkdocs build --strict`` checks them
  like any other link.
- Pages other engineers are still writing (``OPTIONAL``) are in the nav only once they
  exist, so the strict build does not fail in the meantime.
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

log = logging.getLogger("mkdocs.hooks.corral")

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("examples",)  # repository folders copied into the site as they are
OPTIONAL = ("remote.md", "benchmarks.md", "procman.md")
_SKIP = ("__pycache__", ".pyc", "/logs/")
_LINK = re.compile(r"(\]\()([^)\s#]+)((?:#[^)\s]*)?\))")


def _prune(nav: list[Any], docs_dir: Path) -> list[Any]:
    kept: list[Any] = []
    for item in nav:
        if isinstance(item, dict):
            [(title, target)] = item.items()
            if isinstance(target, list):
                kept.append({title: _prune(target, docs_dir)})
                continue
            if isinstance(target, str) and target in OPTIONAL and not (docs_dir / target).exists():
                log.info("nav: %s is not written yet; left out", target)
                continue
        kept.append(item)
    return kept


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    if config.nav is not None:
        config.nav = _prune(config.nav, Path(config.docs_dir))
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for folder in SHIPPED:
        for path in sorted((ROOT / folder).rglob("*")):
            rel = path.relative_to(ROOT).as_posix()
            if path.is_file() and not any(s in f"/{rel}" for s in _SKIP):
                files.append(File(rel, str(ROOT), config.site_dir, config.use_directory_urls))
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    here = posixpath.dirname(page.file.src_uri)

    def rewrite(match: re.Match[str]) -> str:
        target = match.group(2)
        if "://" in target or target.startswith(("/", "mailto:")):
            return match.group(0)
        repo_path = posixpath.normpath(posixpath.join("docs", here, target))
        if repo_path.split("/")[0] not in SHIPPED:
            return match.group(0)
        return match.group(1) + posixpath.relpath(repo_path, here or ".") + match.group(3)

    return _LINK.sub(rewrite, markdown)
