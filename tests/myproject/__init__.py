"""The ``myproject`` the documentation's examples import (``myproject.agents``), offline."""
