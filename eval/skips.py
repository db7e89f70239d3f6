"""Bad items in an evaluation: skipped, counted and listed (as training does), or, with ``strict``, the
end of the run with an error naming the item.

An entry is ``{"source", "item", "reason"}``: ``source`` is where the item was read (``file:line`` of a
manifest or annotation file, ``dataset:index`` of a dataset), ``item`` the media file (or the item's
id when the medium is in memory), ``reason`` what is wrong. Summaries carry ``skipped`` (the list)
and ``skipped_count``; the console prints the first 20.
"""
from __future__ import annotations

from molora.errors import MoLoRAError

__all__ = ["SkipList", "print_skips", "nothing_scored"]


class SkipList:
    def __init__(self, strict: bool = False):
        self.strict = strict
        self.entries: list[dict[str, str]] = []

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, source: str, item: str, err: MoLoRAError) -> None:
        """Record a bad item, or raise (strict) an error of the same class naming ``source (item)``."""
        if self.strict:
            where = f"{source} ({item})" if item and item != source else source
            raise type(err)(err.reason, where) from err
        entry = {"source": source, "item": item, "reason": err.reason}
        if entry not in self.entries:
            self.entries.append(entry)


def print_skips(entries: list[dict[str, str]], where: str) -> None:
    if not entries:
        return
    print(f"[molora] skipped {len(entries)} bad item(s) (listed in {where}; --strict stops at the first):")
    for e in entries[:20]:
        item = f": {e['item']}" if e["item"] and e["item"] != e["source"] else ""
        print(f"  {e['source']}{item}: {e['reason']}")
    if len(entries) > 20:
        print(f"  ... and {len(entries) - 20} more")


def nothing_scored(source: str, entries: list[dict[str, str]], what: str = "item", dropped: int = 0) -> MoLoRAError:
    """The error of a source none of whose items could be scored: how many were skipped, with the first
    three reasons (the summary lists them all), or that every reference was dropped."""
    from .data import SourceError

    if entries:
        first = "; ".join(f"{e['source']}" + (f" ({e['item']})" if e["item"] and e["item"] != e["source"] else "")
                          + f": {e['reason']}" for e in entries[:3])
        more = f" and {len(entries) - 3} more" if len(entries) > 3 else ""
        why = f"every one of its {len(entries)} {what}(s) was skipped: {first}{more}"
    elif dropped:
        why = f"all {dropped} references are empty after normalisation (dropped, as the leaderboard drops them)"
    else:
        why = "it holds none"
    return SourceError(f"no {what} could be scored: {why}", source)
