"""The static archive: the day's view, its pages and feeds as bytes, and the one writer.

``build_site`` runs the steps in order (:mod:`publisher.site.build`): load the articles,
compute the day's view once (:mod:`~publisher.site.view`), render every file to bytes
(:mod:`~publisher.site.pages`), and write them (:mod:`~publisher.site.output`, the only
module that touches the site's folder). Importing this package loads no template or feed
library: a build that finds nothing changed needs none.
"""

from publisher.site.build import (
    BuildReport,
    build_site,
    check_site,
    publish_site,
    site_environment,
)
from publisher.site.output import MODIFIED_MARK
from publisher.site.view import DayView, day_view, load_calendar, upcoming_events

__all__ = [
    "MODIFIED_MARK",
    "BuildReport",
    "DayView",
    "build_site",
    "check_site",
    "day_view",
    "load_calendar",
    "publish_site",
    "site_environment",
    "upcoming_events",
]
