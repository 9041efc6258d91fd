<#
.SYNOPSIS
    Runs keyfleet's real remote helpers the way keyfleet does, for the Pester tests and the Windows workflow.
.DESCRIPTION
    Dot-source it. Windows PowerShell 5.1 only. The child is the exact command keyfleet runs over WinRM:
    powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -EncodedCommand <bootstrap.ps1>, with stdin,
    stdout and stderr redirected. Its stdin follows keyfleet-helper/2: line 1 the compact JSON request (format, helper,
    script in base64, its SHA-256, params), line 2 the base64 of the UTF-8 password (empty when none), then end of file.
    Passwords stay SecureStrings here; the plain text is only ever an argument of .NET methods, so that the
    logging test cannot find it in this process's own events.
#>

$RepoRoot = [IO.Path]::GetFullPath((Join-Path $PSScriptRoot '..\..'))
$HelpersFolder = Join-Path $RepoRoot 'orchestrator\helpers'
$StubsFolder = Join-Path $PSScriptRoot 'stubs'
$ScsmSdkServiceKey = 'HKLM:\SOFTWARE\Microsoft\System Center\2010\Common\SDK Service'
$ScsmSetupKey = 'HKLM:\SOFTWARE\Microsoft\System Center\2010\Service Manager\Setup'
$ScsmTestMarker = 'KeyfleetWindowsTests'

function New-StubTool([string] $Name, [string] $Folder) {
    # a stub SecureStorageBackup.exe compiled from stubs\<Name>.cs into its own folder
    $null = New-Item -ItemType Directory -Force -Path $Folder
    $path = Join-Path $Folder 'SecureStorageBackup.exe'
    $source = [IO.File]::ReadAllText((Join-Path $StubsFolder "$Name.cs"))
    Add-Type -TypeDefinition $source -Language CSharp -OutputType ConsoleApplication -OutputAssembly $path
    return $path
}

function Set-ScsmRegistry([string] $InstallDirectory) {
    # the registry of a management server, as the helpers read it; refused where Service Manager is installed
    foreach ($key in $ScsmSdkServiceKey, $ScsmSetupKey) {
        if ((Test-Path -LiteralPath $key) -and $null -eq (Get-ItemProperty -LiteralPath $key).PSObject.Properties[$ScsmTestMarker]) {
            throw "$key exists and was not made by these tests: run them on a machine without Service Manager"
        }
    }
    # .NET's CreateSubKey makes the missing parent keys and never empties an existing key
    $sdk = [Microsoft.Win32.Registry]::LocalMachine.CreateSubKey($ScsmSdkServiceKey.Substring(6))
    $setup = [Microsoft.Win32.Registry]::LocalMachine.CreateSubKey($ScsmSetupKey.Substring(6))
    try {
        $sdk.SetValue($ScsmTestMarker, 1, [Microsoft.Win32.RegistryValueKind]::DWord)
        $sdk.SetValue('SDK Service Type', 1, [Microsoft.Win32.RegistryValueKind]::DWord)
        $setup.SetValue($ScsmTestMarker, 1, [Microsoft.Win32.RegistryValueKind]::DWord)
        $setup.SetValue('ServerVersion', '10.22.1068.0', [Microsoft.Win32.RegistryValueKind]::String)
        $setup.SetValue('InstallDirectory', $InstallDirectory, [Microsoft.Win32.RegistryValueKind]::String)
    }
    finally {
        $sdk.Dispose()
        $setup.Dispose()
    }
}

function Remove-ScsmRegistry {
    # only the keys these tests made
    foreach ($key in $ScsmSdkServiceKey, $ScsmSetupKey) {
        if ((Test-Path -LiteralPath $key) -and $null -ne (Get-ItemProperty -LiteralPath $key).PSObject.Properties[$ScsmTestMarker]) {
            Remove-Item -LiteralPath $key -Recurse -Force
        }
    }
}

function New-TestPassword {
    # 20 random characters including a space and punctuation, as a SecureString
    $alphabet = 'abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789 #%+-.:=@_'
    $random = New-Object Security.Cryptography.RNGCryptoServiceProvider
    $bytes = New-Object byte[] 20
    $random.GetBytes($bytes)
    $random.Dispose()
    $password = New-Object Security.SecureString
    foreach ($b in $bytes) { $password.AppendChar($alphabet[$b % $alphabet.Length]) }
    # a space inside, not at an end, whatever the draw
    $password.InsertAt(10, ' ')
    $password.MakeReadOnly()
    return $password
}

function Get-Plain([Security.SecureString] $Password) {
    # for .NET method arguments only
    $bstr = [Runtime.InteropServices.Marshal]::SecureStringToBSTR($Password)
    try { return [Runtime.InteropServices.Marshal]::PtrToStringBSTR($bstr) }
    finally { [Runtime.InteropServices.Marshal]::ZeroFreeBSTR($bstr) }
}

function Get-Sha256Hex([byte[]] $Bytes) {
    $sha256 = [Security.Cryptography.SHA256]::Create()
    try { return -join ($sha256.ComputeHash($Bytes) | ForEach-Object { $_.ToString('x2') }) }
    finally { $sha256.Dispose() }
}

function Get-StubKeyContent([Security.SecureString] $Password) {
    # what the readline and readkey stubs write for a password they read exactly
    $utf8 = New-Object Text.UTF8Encoding $false
    $digest = Get-Sha256Hex $utf8.GetBytes((Get-Plain $Password))
    # the comma keeps PowerShell from unrolling the array into the pipeline
    return ,[Text.Encoding]::ASCII.GetBytes("KEYFLEET-STUB-KEY sha256:$digest`n")
}

function Get-HelperScript([string] $Helper) {
    # what keyfleet sends: common.ps1, conpty.ps1 and the helper, joined by newlines, as UTF-8 bytes
    $stream = New-Object IO.MemoryStream
    foreach ($name in 'common', 'conpty', $Helper) {
        if ($stream.Length -gt 0) { $stream.WriteByte(10) }
        $bytes = [IO.File]::ReadAllBytes((Join-Path $HelpersFolder "$name.ps1"))
        $stream.Write($bytes, 0, $bytes.Length)
    }
    return ,$stream.ToArray()
}

function Get-BootstrapCommandLine {
    # as remote.bootstrap_text() sends it: bootstrap.ps1 without its comment lines, each line ended by LF
    $lines = [IO.File]::ReadAllLines((Join-Path $HelpersFolder 'bootstrap.ps1'), (New-Object Text.UTF8Encoding $false))
    $code = New-Object Text.StringBuilder
    foreach ($line in $lines) {
        if (-not $line.TrimStart().StartsWith('#')) { [void]$code.Append($line).Append("`n") }
    }
    $text = $code.ToString()
    $encoded = [Convert]::ToBase64String([Text.Encoding]::Unicode.GetBytes($text))
    return "-NoProfile -NonInteractive -ExecutionPolicy Bypass -EncodedCommand $encoded"
}

function Invoke-Helper {
    param(
        [Parameter(Mandatory = $true)] [string] $Helper,
        [Parameter(Mandatory = $true)] [hashtable] $Params,
        [Security.SecureString] $Password,
        [hashtable] $Environment = @{},
        [double] $TimeoutSeconds = 300
    )
    $helperScript = Get-HelperScript $Helper
    $request = @{
        format = 'keyfleet-helper/2'
        helper = $Helper
        script = [Convert]::ToBase64String($helperScript)
        sha256 = Get-Sha256Hex $helperScript
        params = $Params
    }
    $utf8 = New-Object Text.UTF8Encoding $false
    $stdin = New-Object IO.MemoryStream
    $line = $utf8.GetBytes((ConvertTo-Json -InputObject $request -Compress -Depth 6) + "`n")
    $stdin.Write($line, 0, $line.Length)
    if ($null -ne $Password) {
        $secret = $utf8.GetBytes([Convert]::ToBase64String($utf8.GetBytes((Get-Plain $Password))))
        $stdin.Write($secret, 0, $secret.Length)
        [Array]::Clear($secret, 0, $secret.Length)
    }
    $stdin.WriteByte(10)

    $info = New-Object Diagnostics.ProcessStartInfo
    $info.FileName = Join-Path $PSHOME 'powershell.exe'
    $info.Arguments = Get-BootstrapCommandLine
    $info.UseShellExecute = $false
    $info.CreateNoWindow = $true
    $info.RedirectStandardInput = $true
    $info.RedirectStandardOutput = $true
    $info.RedirectStandardError = $true
    $info.StandardOutputEncoding = $utf8
    $info.StandardErrorEncoding = $utf8
    foreach ($name in $Environment.Keys) { $info.EnvironmentVariables[$name] = [string]$Environment[$name] }
    $watch = [Diagnostics.Stopwatch]::StartNew()
    # .NET Framework's Process.Start writes the preamble of Console.InputEncoding (a UTF-8 BOM under code page
    # 65001) into a redirected stdin at once, before any write (referencesource Process.cs and StreamWriter.cs,
    # AutoFlush; microsoft/MSBuildCache PR 96): start the child under an encoding without one
    $consoleInput = [Console]::InputEncoding
    $withBom = $consoleInput.GetPreamble().Length -gt 0
    if ($withBom) { [Console]::InputEncoding = $utf8 }
    try { $process = [Diagnostics.Process]::Start($info) }
    finally { if ($withBom) { [Console]::InputEncoding = $consoleInput } }
    try {
        $stdout = $process.StandardOutput.ReadToEndAsync()
        $stderr = $process.StandardError.ReadToEndAsync()
        # our own bytes, on the base stream
        $bytes = $stdin.ToArray()
        $process.StandardInput.BaseStream.Write($bytes, 0, $bytes.Length)
        [Array]::Clear($bytes, 0, $bytes.Length)
        $process.StandardInput.Close()
        if (-not $process.WaitForExit([int]($TimeoutSeconds * 1000))) {
            $null = & (Join-Path ([Environment]::SystemDirectory) 'taskkill.exe') /T /F /PID $process.Id
            throw "the $Helper helper did not exit within $TimeoutSeconds s"
        }
        $process.WaitForExit()
        $watch.Stop()
        $out = $stdout.Result
        $resultLines = @($out -split "`r?`n" | Where-Object { $_.StartsWith('KEYFLEET-RESULT ') })
        $result = $null
        if ($resultLines.Count -eq 1) { $result = ConvertFrom-Json $resultLines[0].Substring('KEYFLEET-RESULT '.Length) }
        return New-Object PSObject -Property @{
            ExitCode    = $process.ExitCode
            Stdout      = $out
            Stderr      = $stderr.Result
            ResultLines = $resultLines.Count
            Result      = $result
            Seconds     = $watch.Elapsed.TotalSeconds
        }
    }
    finally {
        $process.Dispose()
        $stdin.Dispose()
    }
}

function Test-PasswordIn([string] $Text, [Security.SecureString] $Password) {
    # the password in any form keyfleet handles: plain, or base64 of its UTF-8 bytes (stdin line 2)
    if ([string]::IsNullOrEmpty($Text)) { return $false }
    $plain = Get-Plain $Password
    $encoded = [Convert]::ToBase64String([Text.Encoding]::UTF8.GetBytes($plain))
    return $Text.Contains($plain) -or $Text.Contains($encoded)
}

function Get-StubProcess([string] $ToolPath) {
    # processes still running from this stub executable
    return @(Get-CimInstance Win32_Process -Filter "Name = 'SecureStorageBackup.exe'" | Where-Object { $_.ExecutablePath -eq $ToolPath })
}

# Group Policy's "Turn on Module Logging" (all modules) and "Turn on PowerShell Script Block Logging", as registry
# values (Microsoft, about_Group_Policy_Settings); new powershell.exe processes read them
$LoggingPolicy = @(
    @{ Key = 'SOFTWARE\Policies\Microsoft\Windows\PowerShell\ModuleLogging'; Name = 'EnableModuleLogging'; Value = 1 }
    @{ Key = 'SOFTWARE\Policies\Microsoft\Windows\PowerShell\ModuleLogging\ModuleNames'; Name = '*'; Value = '*' }
    @{ Key = 'SOFTWARE\Policies\Microsoft\Windows\PowerShell\ScriptBlockLogging'; Name = 'EnableScriptBlockLogging'; Value = 1 }
)

function Enable-PowerShellLogging {
    # returns what was there before, for Restore-PowerShellLogging
    $saved = @()
    foreach ($setting in $LoggingPolicy) {
        $key = [Microsoft.Win32.Registry]::LocalMachine.CreateSubKey($setting.Key)
        try {
            $saved += @{ Key = $setting.Key; Name = $setting.Name; Value = $key.GetValue($setting.Name) }
            $key.SetValue($setting.Name, $setting.Value)
        }
        finally { $key.Dispose() }
    }
    return $saved
}

function Restore-PowerShellLogging([object[]] $Saved) {
    foreach ($setting in $Saved) {
        $key = [Microsoft.Win32.Registry]::LocalMachine.CreateSubKey($setting.Key)
        try {
            if ($null -eq $setting.Value) { $key.DeleteValue($setting.Name, $false) }
            else { $key.SetValue($setting.Name, $setting.Value) }
        }
        finally { $key.Dispose() }
    }
}
