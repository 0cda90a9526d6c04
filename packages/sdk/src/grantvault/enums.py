"""Enumerations of the public surface: providers, HTTP methods and caller types."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["CallerType", "HttpMethod", "Provider"]


class Provider(StrEnum):
    """OAuth provider ids known to the protocol.

    Any string is accepted wherever a provider is expected (managed-secret slugs too); the
    enum only spares typos for the common ones.
    """

    ACUITY_SCHEDULING = "acuity-scheduling"
    ADOBE = "adobe"
    AIRCALL = "aircall"
    AIRTABLE = "airtable"
    APOLLO = "apollo"
    ASANA = "asana"
    ATLASSIAN = "atlassian"
    ATTIO = "attio"
    AUTODESK = "autodesk"
    BASECAMP = "basecamp"
    BITBUCKET = "bitbucket"
    BITLY = "bitly"
    BOX = "box"
    BREX = "brex"
    CALENDLY = "calendly"
    CAL_COM = "cal-com"
    CANVA = "canva"
    CLICKUP = "clickup"
    CLOSE = "close"
    CONSTANT_CONTACT = "constant-contact"
    CONTENTFUL = "contentful"
    DEEL = "deel"
    DIALPAD = "dialpad"
    DIGITALOCEAN = "digitalocean"
    DISCORD = "discord"
    DOCUSIGN = "docusign"
    DROPBOX = "dropbox"
    EBAY = "ebay"
    EVENTBRITE = "eventbrite"
    FACEBOOK = "facebook"
    FIGMA = "figma"
    GITHUB = "github"
    GITLAB = "gitlab"
    GOOGLE = "google"
    HUBSPOT = "hubspot"
    INSTAGRAM = "instagram"
    KLAVIYO = "klaviyo"
    LINEAR = "linear"
    LINKEDIN = "linkedin"
    MAILCHIMP = "mailchimp"
    MERCURY = "mercury"
    MICROSOFT = "microsoft"
    MIRO = "miro"
    MONDAY = "monday"
    NOTION = "notion"
    OUTREACH = "outreach"
    PAGERDUTY = "pagerduty"
    PAYPAL = "paypal"
    PINTEREST = "pinterest"
    PIPEDRIVE = "pipedrive"
    QUICKBOOKS = "quickbooks"
    RAMP = "ramp"
    REDDIT = "reddit"
    RINGCENTRAL = "ringcentral"
    RIPPLING = "rippling"
    SALESFORCE = "salesforce"
    SENTRY = "sentry"
    SLACK = "slack"
    SNAPCHAT = "snapchat"
    SPOTIFY = "spotify"
    SQUARE = "square"
    SQUARESPACE = "squarespace"
    STRIPE = "stripe"
    TIKTOK = "tiktok"
    TODOIST = "todoist"
    TWITTER = "twitter"
    TYPEFORM = "typeform"
    WEBEX = "webex"
    WEBFLOW = "webflow"
    XERO = "xero"
    ZOOM = "zoom"


class HttpMethod(StrEnum):
    """HTTP methods ``request()`` accepts."""

    GET = "GET"
    POST = "POST"
    PUT = "PUT"
    PATCH = "PATCH"
    DELETE = "DELETE"
    HEAD = "HEAD"
    OPTIONS = "OPTIONS"


class CallerType(StrEnum):
    """What kind of software is calling, recorded in the audit trail beside ``caller``."""

    AGENT = "agent"
    SERVICE = "service"
