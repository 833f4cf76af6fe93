from chatsrv.cli import main

raise SystemExit(main())
