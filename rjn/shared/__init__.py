"""What both sides share: this code runs here and, inside the helper's zipapp, on the remote
(standard library only, Python 3.8+).

`record.py` is how every record type is made; `protocol.py` the records the two sides
exchange, requests one way, answers and events the other (and HelperError, an action's
expected failure); `frames.py` single mode's wire; `tree.py` the project's tree as both see it
(what travels, listings, placing without following links, the trash); `folders.py` rjn's
folders on either side. frames.py also travels alone, as part of the far end of single mode's
session (helper/mux.py), which is sent without the zipapp and runs on Python 3.6 too.
"""
