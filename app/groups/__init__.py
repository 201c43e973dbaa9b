"""Groups from the directory: a policy group read from Active Directory / OpenLDAP or
Microsoft Entra ID (issue 16).

app/policy describes a group's source and asks an injected lookup who is in it; this package
reads the directory, caches the answer with a time to live, fails closed once it is stale,
and (the refresh job) tells security of outages and ends the access of leavers.
"""

from app.groups.cache import (
    DirectoryGroups,
    GroupChange,
    GroupStatus,
    describe,
    groups_now,
    path_groups,
    with_directory_groups,
)
from app.groups.readers import GroupReader, GroupUnreadable, Membership, where_from

__all__ = [
    "DirectoryGroups",
    "GroupChange",
    "GroupReader",
    "GroupStatus",
    "GroupUnreadable",
    "Membership",
    "describe",
    "groups_now",
    "path_groups",
    "where_from",
    "with_directory_groups",
]
