#!/usr/bin/env python3
"""Type-checks Keycloak realm files against Keycloak's own `RealmRepresentation` (the
TypeScript definitions shipped in @keycloak/keycloak-admin-client, generated from the Java
representations): every field must exist in Keycloak's model with the right type (tsc's
excess-property checks on object literals). Run by scripts/validate-deploy.sh.

    check.py REALM.json...   exit 1 with tsc's messages on any mismatch
"""
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
IMPORT = 'import type RealmRepresentation from "@keycloak/keycloak-admin-client/lib/defs/realmRepresentation.js";\n'


def check(realms):
    with tempfile.TemporaryDirectory(dir=HERE) as work:
        files = []
        for i, (name, realm) in enumerate(realms):
            path = os.path.join(work, f"realm{i}.ts")
            with open(path, "w") as out:
                out.write(f"// {name}\n{IMPORT}\nexport const realm: RealmRepresentation = {json.dumps(realm, indent=2)};\n")
            files.append(path)
        config = {"compilerOptions": {"strict": True, "noEmit": True, "module": "nodenext",
                                      "moduleResolution": "nodenext", "target": "es2022",
                                      "skipLibCheck": True}, "files": files}
        with open(os.path.join(work, "tsconfig.json"), "w") as out:
            json.dump(config, out)
        tsc = os.path.join(HERE, "node_modules", ".bin", "tsc")
        done = subprocess.run([tsc, "-p", work], capture_output=True, text=True)
        return done.returncode, done.stdout + done.stderr


def main():
    realms = [(path, json.load(open(path))) for path in sys.argv[1:]]
    # The check must be able to fail: a realm with an unknown client field must be refused.
    probe = json.loads(json.dumps(realms[0][1])) if realms else {"realm": "probe"}
    probe.setdefault("clients", [{}])
    (probe["clients"] or [{}])[0]["notAKeycloakField"] = True
    code, _ = check([("probe", probe)])
    if code == 0:
        print("error: the Keycloak type check accepted an unknown field; it checks nothing")
        return 1
    code, output = check(realms)
    if code != 0:
        print(output)
        return 1
    print(f"{len(realms)} realm file(s) match Keycloak's RealmRepresentation")
    return 0


if __name__ == "__main__":
    sys.exit(main())
