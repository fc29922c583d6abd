"""What both sides share: this code runs here and, inside the helper's zipapp, on the remote
(standard library only, Python 3.8+).

`record.py` is how every record type is made; `protocol.py` the records the two sides
exchange (and HelperError, an action's expected failure); `tree.py` the project's tree as both
see it (what travels, listings, placing without following links, the trash); `folders.py`
rjn's folders on either side. The far end of single mode's session (helper/mux.py) defines
its own frames: it is sent alone, without the zipapp.
"""
