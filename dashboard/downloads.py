"""Downloads: every output of the region, one link each (maps, styles, inventories, reports).

The list comes from the tile server (``GET /downloads``: only files slidemap's commands wrote, found
where they put them) and each link fetches the file from the server, so a user on another machine
takes the data with them and a file of gigabytes streams from the server instead of passing
through this page.
"""

from __future__ import annotations

from pydantic import ValidationError

from slidemap.dashboard.client import ServerFailed, ServerUnavailable, get_json
from slidemap.report_schema import Output, OutputsResponse


def label(o: Output) -> str:
    """A button's text: the file name (reports, which share one name per run: their run folder) and size."""
    shown = o.path.split("/", 1)[-1] if o.group == "Reports" else o.path.rsplit("/", 1)[-1]
    return f"{shown} ({size_text(o.size)})"


def size_text(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def fetch_outputs(server: str) -> list[Output]:
    """The region's outputs as the server lists them; raises the client's errors."""
    url = f"{server.rstrip('/')}/downloads"
    try:
        return OutputsResponse.model_validate(get_json(url)).outputs
    except ValidationError as exc:
        raise ServerFailed(f"the tile server's {url} is not a list of outputs ({exc.errors()[0]['msg']})") from exc


def render(server: str) -> None:
    import streamlit as st

    st.header("Downloads")
    try:
        outputs = fetch_outputs(server)
    except (ServerUnavailable, ServerFailed) as exc:
        st.warning(f"The region's outputs come from the tile server, which did not list them: {exc}")
        return
    if not outputs:
        st.info("No outputs in the region yet: `slidemap map susceptibility`, `slidemap inventory` and "
                "`slidemap train` write them.")
        return
    base = server.rstrip("/")
    for group in dict.fromkeys(o.group for o in outputs):
        st.subheader(group)
        for o in (o for o in outputs if o.group == group):
            st.link_button(f"{label(o)} - {o.what}", f"{base}{o.href}", help=o.path)
